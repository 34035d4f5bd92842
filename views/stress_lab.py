"""Stress test: one X-ray, one perturbation, every model's answer side by side.

The page is in two parts. The top (models, image, input check) runs on a full rerun: a new upload, another example or
model. The panel below (controls, cards, snapshot) is an ``st.fragment``: moving one of its sliders reruns only the
panel, and what it needs from the top (the decoded image, the clean analysis) comes from per-session caches
(:mod:`medrobust.dashboard.stress_session`), so it is never computed twice.
"""

import functools
import json

import streamlit as st

from medrobust.dashboard import resultsets, ui

ui.page_header("Stress test", "Upload one chest X-ray (or try an example), disturb it, and see how each model's answer moves.")

with st.spinner("Loading PyTorch…"):  # the first visit in a server process imports torch (seconds)
    from medrobust import clinical_scale
    from medrobust.dashboard import (camdepth, captions, flip_search, modelset, perturbation, samples, snapshot,
                                     tiles)
    from medrobust.dashboard import stress_session as held

# ----------------------------------------------------------------------------- models
run_models = resultsets.discover_run_models()
with st.sidebar:
    extra = []
    if run_models:
        labels = {str(m.path): m.name for m in run_models}
        extra = st.multiselect("Also test trained runs", list(labels), format_func=labels.get, key="extra_runs")
model_set = ui.model_set(extra)
if model_set.message:
    st.warning(model_set.message, icon=":material/warning:")
if not model_set.ok_models:
    st.stop()
MAX_CARDS = 4  # side-by-side cards stay readable up to four models
if len(model_set.ok_models) > MAX_CARDS:
    with st.sidebar:
        loadable = [m.name for m in model_set.ok_models]
        chosen = st.multiselect(f"Models to compare ({len(loadable)} found; up to {MAX_CARDS} side by side)",
                                loadable, default=loadable[:MAX_CARDS], max_selections=MAX_CARDS, key="stress_models")
    if not chosen:
        st.info("Choose at least one model in the sidebar.", icon=":material/info:")
        st.stop()
    # Checkpoints that failed to load keep their error card, whatever is chosen.
    model_set = model_set.only([*chosen, *(m.name for m in model_set.models if not m.ok)])
ok_models = model_set.ok_models
st.caption(captions.models_caption(ok_models))
if not ok_models:
    st.warning("None of the chosen models could be loaded; choose others in the sidebar.", icon=":material/warning:")
    st.stop()




def _example_input():
    """No upload yet: one of the shipped, CC BY-licensed example X-rays ("Try an example")."""
    from medrobust.dashboard import examples

    st.info("No X-ray uploaded: showing an example. Upload your own above (PNG, JPEG or DICOM, recognised by "
            "content), or pick another example.", icon=":material/upload:")
    shipped = examples.list_examples()
    cards = {m.name: m.card for m in ok_models}
    labels = [f"Example {i + 1}: {e.class_name} ({e.split} split of the shipped models; {e.exposure(cards)})"
              for i, e in enumerate(shipped)]
    pick = st.selectbox("Try an example", range(len(shipped)), format_func=labels.__getitem__, key="example")
    ex = shipped[pick]
    image = held.decoded_example(file=ex.file, _data=examples.example_bytes(ex))
    st.caption(ex.caption)
    info = {"source": "example", "file": ex.file, "split": ex.split, "true_class": ex.class_name,
            "license": ex.license}
    return image, info, ex.class_name, f"example:{ex.file}"


def _uploaded_input(up):
    image = held.decoded_upload(file_id=up.file_id, _upload=up)  # decoded once per file, for this session only
    if image.error:
        st.error(f"This file cannot be used: {image.error}", icon=":material/block:")
        st.stop()
    return image, {"source": "upload"}, f"upload:{up.file_id}"


def _sample_input(roots):
    try:
        test_split = samples.test_samples(roots, ok_models[0].card)
    except ValueError as exc:
        st.error(f"The data folders cannot be read: {exc}")
        st.stop()
    if not test_split:
        st.warning("The test split of these folders is empty.")
        st.stop()
    names = [f"{s.key} ({s.class_name})" for s in test_split]
    pick = st.selectbox(f"Test-split image ({len(test_split)} available)", range(len(test_split)), format_func=names.__getitem__,
                        key="sample")
    sample = test_split[pick]
    image = held.decoded_sample(path=str(sample.path))
    if image.error:
        st.error(f"This sample cannot be read: {image.error}")
        st.stop()
    info = {"source": "test split", "key": sample.key, "true_class": sample.class_name}
    return image, info, sample.class_name, f"sample:{sample.path}"


# ----------------------------------------------------------------------------- image source
with st.sidebar:
    data_text = st.text_area("Data folder(s) for test-split samples (one per line)", ui.data_roots_text(),
                             key="data_roots", help="COVID collections (metadata.csv + images/), CSV manifests or ImageFolder trees. "
                                                    "Default: $MEDROBUST_DATA.")
roots = ui.parse_roots(data_text)
sources = ["Upload an X-ray"] + (["Sample from the test split"] if roots else [])
source = (st.radio("Image", sources, horizontal=True, key="source", label_visibility="collapsed")
          if len(sources) > 1 else sources[0])

true_label = None
if source == "Upload an X-ray":
    up = st.file_uploader("Chest X-ray: PNG, JPEG (8/16-bit, grey or colour) or DICOM", type=None, key="upload",
                          help="Decoded in memory only: the file is never written to disk and no DICOM tag is read "
                               "beyond the pixel data and its LUTs.")
    if up is None:
        image, image_info, true_label, source_id = _example_input()
    else:
        image, image_info, source_id = _uploaded_input(up)
else:
    image, image_info, true_label, source_id = _sample_input(roots)
decoded = image.stored  # format, bit depth, size, note (its pixels may be held as integers: the caches expand them)
image_info.update({"format": decoded.format, "bit_depth": decoded.bit_depth,
                   "height": int(decoded.pixels.shape[0]), "width": int(decoded.pixels.shape[1])})

# ----------------------------------------------------------------------------- input check (before any verdict)
checker = ui.input_checker()
scope = held.input_verdict(source_id=source_id, checker_id=str(id(checker)), _image=image, _checker=checker)
outside = not scope.ok
if outside:
    st.error("**Outside what these models were trained on.** " + " ".join(scope.reasons) +
             " No verdict is given for it.", icon=":material/block:")
    if not st.toggle("Show the models' outputs anyway (they were not trained on images like this)", key="reveal_flagged"):
        st.stop()
if getattr(decoded, "colourfulness", 0.0) > 0.01 and "colour" not in scope.codes:
    st.caption(":material/palette: The file is stored in colour; the models see its grey version.")
if not outside and "no_learned_check" in scope.codes:
    st.caption(":material/info: Only the basic input checks ran (size, colour, uniformity): no fitted input check "
               "was found beside the models.")

sizes = sorted({m.image_size for m in ok_models})
image_info["digest"] = image.digest
image_info["model_sizes"] = sizes


# ----------------------------------------------------------------------------- controls
def _controls(*, ok_models, sizes, image_info, source_id, image, note):
    """The perturbation, Grad-CAM and flip-search controls; returns (perturbation, cam layer, perturbed Grad-CAM or not,
    flip steps, clicked)."""
    lim = perturbation.limits()
    kinds = list(perturbation.KINDS)
    c1, c2, c3 = st.columns([2, 3, 2])
    with c1:
        kind = st.radio("Perturbation", kinds, format_func=perturbation.KIND_LABELS.get, key="kind")
        seed = int(st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="seed"))
    with c2:
        severity, eps, steps, mode, src, method = 0.0, 0.0, 20, "own", None, "pgd"
        corruption, level = "gaussian_noise", 2
        if kind == "clinical":
            corruption = st.selectbox("Corruption", perturbation.CLINICAL_KINDS, format_func=clinical_scale.DISPLAY_NAMES.get,
                                      key="corruption")
            level = st.select_slider("Level (1 barely visible, 5 brings a standard model near chance)",
                                     options=list(clinical_scale.LEVELS), value=2, key="level")
            st.caption(f"Level {level}: {clinical_scale.level_meaning(corruption, level, side=sizes[0])}. The benchmark's "
                       "clinical suite runs these nine corruptions at these five levels.")
        elif kind in perturbation.NOISE_KINDS:
            severity = st.slider("Severity (the paper's scale)", 0.0, 1.0, 0.1, 0.05, key="severity",
                                 help="Variance for Gaussian and speckle noise; fraction of pixels replaced for salt & "
                                      "pepper, as in the paper and skimage.util.random_noise.")
            st.caption(captions.paper_noise_meaning(kind, severity))
        elif kind == "pgd":
            eps = st.slider("L2 eps (stated at 224 px)", 0.0, perturbation.MAX_EPS, 1.0, 0.25, key="eps",
                            help="As in the benchmark: scaled by side/224 to the model's resolution.")
            st.caption(captions.eps_meaning(eps))
            steps = st.slider("PGD steps", 1, lim.max_steps, min(20, lim.max_steps), 1, key="steps",
                              help="Capped at 20 on this public demo." if lim.max_steps < perturbation.MAX_STEPS else None)
            method = st.radio("Attack method", list(perturbation.ATTACK_METHODS), format_func=perturbation.ATTACK_METHODS.get,
                              horizontal=True, key="attack_method",
                              help="The benchmark counts the worst case: an image is robust only if neither attack fools it.")
            mode = st.radio("Attack", ["own", "transfer"], horizontal=True, key="mode",
                            format_func={"own": "each model on its own", "transfer": "transfer from one model"}.get)
            if mode == "transfer":
                src = st.selectbox("Crafted on", [m.name for m in ok_models], key="source_model")
        else:
            st.caption("No perturbation: the cards show each model's answer on the image as it is.")
    with c3:
        cam_layers = list(camdepth.CAM_DEPTHS)
        cam_layer = st.selectbox("Grad-CAM layer", cam_layers, format_func=camdepth.CAM_DEPTH_LABELS.get, key="cam_layer",
                                 index=0 if min(sizes) >= 128 else cam_layers.index("layer3"),
                                 help="layer4 alone is a 4×4 grid at 128 px (2×2 at 64 px): coarse blobs that often "
                                      "sit under the diaphragm. The default averages it with layer3 (8×8 at 128 px); "
                                      "models under 128 px default to layer3. Each card says the grid behind its map: "
                                      "anything finer is bilinear upsampling. Networks other than ResNets use their own "
                                      "stages: layer4 = the deepest, layer3 = one earlier. A flat map is drawn as no "
                                      "overlay.")
        with_cam = st.toggle("Grad-CAM of the perturbed input", value=False, key="cam_perturbed",
                             help="Off, each card shows the clean image's Grad-CAM (computed once per image) beside the "
                                  "answer under the perturbation. On, every change of the perturbation also explains "
                                  "each perturbed answer: one backward pass per model, about three times the work of "
                                  "the answer alone, so the page answers slower.")
        flip_steps = st.slider("PGD steps for the flip search", 5, lim.max_flip_steps, 10, 5, key="flip_steps",
                               help="More steps find smaller flipping radii but take longer (about 7 attacks per model).")
        find_flip = st.button("Smallest eps that flips each prediction", key="find_flip",
                              help="Bisection over the L2 PGD radius (0–5 at 224 px), per model.")
        st.image(held.preview_tile(source_id=source_id, size=sizes[0], _image=image))
        st.caption(f"{image_info['format']}, {image_info['bit_depth']}-bit, {image_info['width']}×{image_info['height']} "
                   f"px → {', '.join(map(str, sizes))} px model input" + (f". {note}" if note else ""))
    pert = perturbation.Perturbation(kind=kind, severity=float(severity), eps=float(eps), steps=int(steps), mode=mode,
                                     source=src, seed=seed, method=method, corruption=corruption, level=int(level))
    return pert, cam_layer, with_cam, flip_steps, find_flip


# ----------------------------------------------------------------------------- model cards
CHANGE_COLOURS = {"right → wrong": "inverse", "wrong → right": "normal", "changed": "off", "unchanged": "off"}


def _verdict_block(o, *, kind: str, outside: bool) -> None:
    """The verdict at the model's operating point, its calibrated probability, and the raw value in the details."""
    tracked = o.classes[o.tracked_class]
    d = o.decided()
    label = captions.OUTSIDE_LABEL if outside else captions.VERDICT_LABEL
    if d is None:
        label = captions.RAW_LABEL
    delta = o.change if kind != "none" else None
    st.metric(label, o.verdict_text(), delta=delta, delta_color=CHANGE_COLOURS.get(delta, "off"), delta_arrow="off",
              help="Change of the answer by the perturbation; with the true label known: right → wrong or wrong → right.")
    if d is not None:
        p_cal = float(d["probs"][o.tracked_class])
        st.progress(min(1.0, max(0.0, p_cal)), text=f"P({tracked}), calibrated = {p_cal:.1%}")
        sets = ", ".join(f"{m.upper()} {{{', '.join(c for c, keep in zip(o.classes, v) if keep)}}}"
                         for m, v in d["sets"].items())
        with st.expander("Details", expanded=False):
            st.caption(f"Raw model output: P({tracked}) = {o.p_tracked:.1%}. Calibrated = after dividing the "
                       f"logits by the temperature fitted on validation patients. {o.decision.describe()}. "
                       f"Conformal sets ({1 - o.decision.fit['config']['alpha']:.0%} promise on clean validation "
                       f"images): {sets}.")
    else:
        st.progress(min(1.0, max(0.0, o.p_tracked)), text=f"P({tracked}) = {o.p_tracked:.1%} (raw, uncalibrated)")
        st.caption("No temperature, operating point or referral level was fitted for this model (its card lists no "
                   "validation patients); run `python -m medrobust fit-decision` with `--fit-data`.")
    if kind != "none":
        st.caption(f"Unperturbed: {o.verdict_text('clean')}. {captions.delta_meaning(o.l2, o.linf, o.image_size)}")


def _card(o, pics, *, vmax, clean, cam_layer, kind, outside, flip):
    """One model's card: its verdict, the flip radius if searched, and its pictures."""
    detail = f"{o.image_size} px" if o.name == o.method else f"{o.method}, {o.image_size} px"
    st.markdown(f"<span style='color:{o.colour};font-size:1.3em'>■</span> **{o.name}** "
                f"<span style='color:#888'>({detail})</span>", unsafe_allow_html=True)
    if not o.ok:
        st.error(o.error, icon=":material/block:")
        return
    if o.warning:
        st.caption(":material/warning: collapsed in training: answers one class for most images, so its "
                   "robustness means nothing", help=o.warning)
    _verdict_block(o, kind=kind, outside=outside)
    if flip is not None:
        st.caption(f"Smallest flipping eps: {flip.describe()}")
    a, b = st.columns(2)
    a.image(pics["perturbed"], caption="input seen by the model", width="stretch")
    if "perturbation" not in pics:  # the input is unchanged: its one Grad-CAM beside it, no empty or repeated tile
        b.image(pics["cam_clean"], caption=tiles.cam_caption(o, "", tiles.cam_is_flat(o.cam_clean)), width="stretch")
    else:
        b.image(pics["perturbation"], caption=(f"perturbation ×{tiles.magnification(vmax):.0f} "
                                               "(red brighter, blue darker)"), width="stretch")
        a, b = st.columns(2)
        a.image(pics["cam_clean"], caption=tiles.cam_caption(o, "clean", tiles.cam_is_flat(o.cam_clean)),
                width="stretch")
        if "cam_perturbed" in pics:
            b.image(pics["cam_perturbed"], caption=tiles.cam_caption(o, "perturbed", tiles.cam_is_flat(o.cam_pert)),
                    width="stretch")
        else:
            b.caption("Grad-CAM of the perturbed input: off (the switch *Grad-CAM of the perturbed input* above).")
    cv = clean.views.get(o.name)
    if cv is not None and cv.cam_grid:
        st.caption(captions.cam_resolution(cam_layer, cv.cam_grid, o.image_size, cv.cam_layers))


def _flips(*, model_set, clean, clean_key, flip_steps, seed, find_flip):
    """The smallest flipping eps per model, once asked for (kept for this image, models and layer)."""
    asked = st.session_state.get("stress_flips", {})
    asked = {k: v for k, v in asked.items() if k[1] == clean_key}  # earlier images' searches are dropped
    flip_key = ("flip", clean_key, flip_steps, seed)
    if find_flip and flip_key not in asked:
        bar = st.progress(0.0, text="Searching the smallest flipping eps…")
        asked[flip_key] = flip_search.flip_search_all(
            model_set, clean, steps=flip_steps, seed=seed,
            on_model=lambda k, n: bar.progress(k / n, text=f"Searching the smallest flipping eps: {k}/{n} models done"))
        bar.empty()
    st.session_state["stress_flips"] = asked
    return asked.get(flip_key)


def _snapshot(*, model_set, pert, outcomes, flips, image_info, cam_layer):
    """The downloads: the JSON at once (small), the ZIP of pictures built only when its button is pressed."""
    snap = snapshot.snapshot(model_set=model_set, pert=pert, outcomes=outcomes, flips=flips, image=image_info,
                             cam_layer=cam_layer)
    snap_json = json.dumps(snap, indent=1, default=float)
    snap_zip = functools.partial(snapshot.snapshot_zip, snap, outcomes)  # built when downloaded, not on every rerun
    st.session_state["stress_snapshot"] = {"description": pert.describe(), "json": snap_json, "zip": snap_zip}
    d1, d2, _ = st.columns([2, 2, 3])
    d1.download_button("Download snapshot (ZIP: JSON + images)", snap_zip, file_name="medrobust-stress-snapshot.zip",
                       mime="application/zip", on_click="ignore", key="dl_snapshot_zip")
    d2.download_button("Download snapshot (JSON)", snap_json, file_name="medrobust-stress-snapshot.json",
                       mime="application/json", on_click="ignore", key="dl_snapshot_json")
    st.caption("The snapshot holds the settings, every model's answer and checkpoint hash, and the model-resolution "
               "images; it never holds the file name or any DICOM tag.")


# ----------------------------------------------------------------------------- the panel (reruns on its own)
@st.fragment
def stress_panel(*, model_set, image, image_info, source_id, true_label, outside):
    """Controls, cards and snapshot: a slider move reruns this function only (see the module docstring)."""
    ok_models = model_set.ok_models
    sizes = image_info["model_sizes"]
    pert, cam_layer, with_cam, flip_steps, find_flip = _controls(ok_models=ok_models, sizes=sizes, image_info=image_info,
                                                       source_id=source_id, image=image, note=image.stored.note)
    set_key = modelset.model_set_key(model_set)
    clean_key = (source_id, set_key, cam_layer)
    with st.spinner("Analysing the image…"):
        clean = held.clean_analysis(source_id=source_id, set_key=set_key, cam_layer=cam_layer,
                                    _model_set=model_set, _image=image)
    out_key = (clean_key, pert, true_label, with_cam)
    with st.spinner("Attacking…" if pert.kind == "pgd" else "Predicting…"):
        outcomes = held.outcomes(clean_key=clean_key, pert=pert, true_label=true_label, with_cam=with_cam,
                                 _model_set=model_set, _clean=clean)
    flips = _flips(model_set=model_set, clean=clean, clean_key=clean_key, flip_steps=flip_steps, seed=pert.seed,
                   find_flip=find_flip)
    flip_by_name = {f.name: f for f in flips} if flips else {}

    desc = pert.describe()
    st.markdown(f"**{desc[:1].upper() + desc[1:]}**"
                + (f" · true class of this image: **{true_label}**" if true_label is not None else ""))
    st.caption("P(class) is the model's probability that the image shows that class (calibrated: after the temperature "
               "fitted on validation patients). The mark under each verdict says what the perturbation did to it"
               + (": right → wrong (red), wrong → right (green), or unchanged." if true_label is not None else
                  " (the true class is unknown, so only whether it changed).")
               + captions.attack_steps({o.attack_steps for o in outcomes if o.attack_steps}))
    vmax = tiles.shared_delta_scale(outcomes)
    pictures = held.card_tiles(clean_key=clean_key, outcome_key=out_key, _outcomes=outcomes)
    cols = st.columns(len(outcomes))
    for i, (col, o, pics) in enumerate(zip(cols, outcomes, pictures)):
        with col.container(border=True, key=f"model-card-{i}"):
            _card(o, pics, vmax=vmax, clean=clean, cam_layer=cam_layer, kind=pert.kind, outside=outside,
                  flip=flip_by_name.get(o.name))
    st.caption(captions.CAM_EXPLAINS)

    if flips:
        st.subheader("Smallest eps that flips each prediction")
        colours = {o.name: o.colour for o in outcomes}
        rows = tuple((f.name, colours.get(f.name, "#777"), f.eps) for f in flips if not f.error)
        st.plotly_chart(held.flip_figure(rows=rows, max_eps=perturbation.MAX_EPS), key="flip_fig")
        st.caption("L2 radius stated at 224 px, found by bisection (tolerance 0.05) over seeded PGD; hatched: not "
                   "flipped even at eps 5. A robust model needs a larger eps.")

    _snapshot(model_set=model_set, pert=pert, outcomes=outcomes, flips=flips, image_info=image_info,
              cam_layer=cam_layer)


stress_panel(model_set=model_set, image=image, image_info=image_info, source_id=source_id, true_label=true_label,
             outside=outside)
