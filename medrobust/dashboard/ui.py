"""Streamlit glue shared by the dashboard's pages: cached model loading, result-set pickers, warnings.

Only the pages import this module (it imports Streamlit). Models are loaded once per process with
``st.cache_resource`` (keyed by the files' size and mtime, so a replaced checkpoint is reloaded)
and are shared read-only by every session: they stay in eval mode and are never hooked.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import streamlit as st

from medrobust import settings
from medrobust.dashboard import resultsets

if TYPE_CHECKING:
    from medrobust.dashboard.modelset import ModelSet

# Intra-op threads for the dashboard process: ``settings.torch_threads()`` (default 1). Single images are
# too small to gain from more, each browser session already runs in its own thread, and on a small
# machine shared with a training job, 2 OpenMP threads were starved ~10x worse than 1 (measured).
def _configure_torch() -> None:
    import torch  # imported here, not at the top: Overview, Calibration and Downloads never need torch

    threads = settings.torch_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)

# pydicom's validation messages quote element values ("Invalid value for VR DA: '19700101x'"); in the
# dashboard process nothing read from an upload may reach a log, so its logger and warnings are silenced.
_pydicom_log = logging.getLogger("pydicom")
_pydicom_log.setLevel(logging.CRITICAL + 1)
_pydicom_log.propagate = False
warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")

DEGENERATE_TEXT = ("answers one class for {pct:.0f} % of the test images: it does not tell patients apart, so "
                   "its robustness numbers mean nothing (a constant answer cannot be attacked or disturbed).")


def _freeze_long_lived_objects() -> None:
    """Move every object alive now (torch, Streamlit, the models: about 420,000 objects) out of the cyclic garbage
    collector's sight (``gc.freeze``), unless ``MEDROBUST_GC_FREEZE`` is off.

    Streamlit runs ``gc.collect(2)`` after every script run (``runner.postScriptGC``), holding the GIL while it walks
    every tracked object: 165 ms per run here once torch and the models are loaded (a quarter of a loaded server's
    samples in a profile), for every session's every slider move. Frozen objects are not walked again, so the
    collection after a run sees only what the run allocated (well under 1 ms), and memory is still collected after
    each run. Garbage is collected first, so only live objects are frozen; a model set evicted from the cache later is
    freed by reference counting (a reference cycle among frozen objects would stay).
    """
    import gc

    if settings.gc_freeze():
        gc.collect()
        gc.freeze()


@st.cache_resource(show_spinner="Loading models…", max_entries=4)
def _model_set(folder: str, extra: tuple[str, ...], signature: tuple) -> "ModelSet":
    from medrobust.dashboard.modelset import load_model_set

    del signature  # only part of the cache key
    extra_files = [m for m in resultsets.discover_run_models() if str(m.path) in set(extra)]
    models = load_model_set(folder, extra=extra_files)
    _freeze_long_lived_objects()  # once per model set: torch and the models are loaded by now
    return models


@st.cache_resource(show_spinner=False, max_entries=2)
def _input_checker(path: str, mtime_ns: int):
    from medrobust.input_check import InputCheck

    del mtime_ns  # only part of the cache key
    return InputCheck.load(path)


def input_checker():
    """The fitted input check beside the shipped models (None when there is none), cached per process."""
    from medrobust.input_check import default_input_check_path

    path = default_input_check_path()
    if not path.is_file():
        return None
    return _input_checker(str(path), path.stat().st_mtime_ns)


def model_set(extra_runs: Sequence[str] = ()) -> "ModelSet":
    """The shipped model set (``$MEDROBUST_CHECKPOINTS``) plus the chosen finished runs, cached per process."""
    _configure_torch()
    folder = settings.checkpoints_dir()
    files = resultsets.discover_models(folder) + [m for m in resultsets.discover_run_models()
                                                  if str(m.path) in set(extra_runs)]
    # A refitted decision rule (the results file of a model) reloads the set too.
    results = [d / f"{m.name}.json" for m in files for d in (folder / "results", settings.results_dir())]
    signature = resultsets.files_signature(files) + tuple(
        (str(r), r.stat().st_mtime_ns) for r in results if r.is_file())
    return _model_set(str(folder), tuple(sorted(extra_runs)), signature)


DEMO_NOTICE = ("Public demo: these are research models trained on a small public data set. They are not a "
               "diagnostic device and must not guide the care of any patient.")


def demo_notice() -> None:
    """In demo mode (``MEDROBUST_DEMO=1``), the research-use notice at the top of every page."""
    if settings.demo_mode():
        st.warning(DEMO_NOTICE, icon=":material/health_and_safety:")


def training_is_hidden() -> bool:
    """Demo mode without an admin token: nobody may launch jobs, so the Training page shows no launch form."""
    return settings.demo_mode() and settings.admin_token() is None


def degenerate_warnings(results: Sequence[dict[str, Any]]) -> None:
    for r in results:
        if r.get("degenerate"):
            st.warning(f"**{r['name']}** " + DEGENERATE_TEXT.format(pct=100 * float(r.get("majority_fraction", 1.0))),
                       icon=":material/warning:")


#: Session-state keys of the result-set choice that every results page shares (kept for the browser session).
SHARED_CHOICE = {"set": "results_choice_set", "runs": "results_choice_runs", "attempts": "results_choice_attempts"}


def _shared_widget(key: str, part: str, options: Sequence[str], default):
    """Seed a page's picker with the choice made on any page (a page's own widget state is dropped when the visitor
    leaves it), and return the widget key; the page stores the new choice after rendering it."""
    wkey = f"{key}_{part}"
    shared = st.session_state.get(SHARED_CHOICE[part], default)
    if isinstance(shared, str):
        value = shared if shared in options else default
    else:
        value = [x for x in shared if x in options]
    if st.session_state.get(wkey) != value:
        st.session_state[wkey] = value
    st.session_state[SHARED_CHOICE[part]] = value
    return wkey


def _remember(wkey: str, part: str) -> None:
    """on_change: a choice made on this page becomes the shared one before the page reruns."""
    st.session_state[SHARED_CHOICE[part]] = st.session_state[wkey]


def pick_results(key: str) -> tuple[list[dict[str, Any]], list[resultsets.ResultSet]]:
    """Sidebar pickers: one primary result set plus evaluated training runs and earlier attempts; returns the results
    shown. The choice is shared: a set picked on one page is the set on every page that shows results."""
    sets = resultsets.discover_result_sets()
    if not sets:
        return [], []
    primary = [s for s in sets if s.kind not in ("run", "attempt")]
    runs = [s for s in sets if s.kind == "run"]
    attempts = [s for s in sets if s.kind == "attempt"]
    chosen: list[resultsets.ResultSet] = []
    with st.sidebar:
        if primary:
            labels = [s.label for s in primary]
            if len(primary) > 1:
                wkey = _shared_widget(key, "set", labels, labels[0])
                label = st.selectbox("Result set (the same on every page)", labels, key=wkey,
                                     on_change=_remember, args=(wkey, "set"),
                                     help="Several result sets exist: the cross-validated ones (the headline), the "
                                          "shipped single-split models', and the ones in results/.")
            else:
                label = labels[0]
                st.caption(f"Result set: {label}")
            chosen.append(primary[labels.index(label)])
        if runs:
            run_labels = [s.label for s in runs]
            wkey = _shared_widget(key, "runs", run_labels, run_labels)
            picked = st.multiselect("Trained runs shown beside them", run_labels, key=wkey,
                                    on_change=_remember, args=(wkey, "runs"))
            chosen += [s for s in runs if s.label in picked]
        if attempts:
            attempt_labels = [s.label for s in attempts]
            wkey = _shared_widget(key, "attempts", attempt_labels, [])
            picked = st.multiselect("Other training attempts shown beside them", attempt_labels, key=wkey,
                                    on_change=_remember, args=(wkey, "attempts"), help="Results of training attempts whose weights are not shipped (see checkpoints/README.md).")
            chosen += [s for s in attempts if s.label in picked]
    for s in chosen:
        for e in s.errors:
            st.caption(f"{s.label}: {e}")
    return resultsets.combine(chosen), sets


def no_results_message() -> None:
    st.info(
        f"No evaluation results yet. The shipped results belong in `{settings.shipped_results_dir()}/`; "
        "`python -m medrobust evaluate` writes to `results/`, and a run trained on the Training page can be "
        "evaluated there. The **Stress test** page works without any results.",
        icon=":material/info:",
    )


def page_header(title: str, subtitle: str | None = None) -> None:
    st.title(title)
    if subtitle:
        st.caption(subtitle)


def data_roots_text() -> str:
    """Default data folders for forms: ``$MEDROBUST_DATA`` (os.pathsep-separated), one per line."""
    return "\n".join(str(r) for r in settings.env_data_roots())


def parse_roots(text: str) -> list[Path]:
    return [Path(line.strip()).expanduser() for line in (text or "").splitlines() if line.strip()]
