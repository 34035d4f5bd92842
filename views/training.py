"""Training: launch `python -m medrobust train` as a background job, follow it, cancel it, evaluate it."""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from medrobust.choices import Arch
from medrobust.dashboard import jobs, plots, resultsets, ui
from medrobust.methods import METHODS
from medrobust.dashboard.palette import colour_for
from medrobust.training import PRESETS, TrainConfig

ui.page_header("Training", "Train a new model in the background; it keeps running if you close the tab.")

if ui.training_is_hidden():
    st.info("Training and evaluation jobs are switched off on this public demo. Whoever runs the server can enable "
            "them for token holders by setting `MEDROBUST_ADMIN_TOKEN`.", icon=":material/lock:")
    st.stop()

manager = jobs.JobManager()

if jobs.token_required():
    token = st.text_input("Admin token", type="password", key="admin_token",
                          help="This server requires the token set in MEDROBUST_ADMIN_TOKEN to launch or cancel jobs.")
else:
    token = None
    st.info("Training is open to anyone who can reach this page: set the environment variable "
            "`MEDROBUST_ADMIN_TOKEN` before starting the server to require a token.", icon=":material/lock_open:")


def _fmt_s(s):
    if s is None:
        return "–"
    s = int(s)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def job_panel() -> None:
    job = manager.current()
    if job is None:
        st.caption("No job has run yet on this server.")
        return
    status = manager.status(job)
    title = f"{job.kind.capitalize()} job {job.label or job.id}: **{status.state}**"
    st.markdown(title + f" · started {time.strftime('%H:%M:%S', time.localtime(job.started))}, run folder `{job.run_dir}`")
    if job.kind == "train":
        prog = jobs.read_progress(job.run_dir)
        text = (f"epoch {prog.epoch}/{prog.epochs}, step {prog.step}/{prog.steps_per_epoch}" if prog.started
                else "loading data…")
        st.progress(prog.fraction, text=text)
        m1, m2, m3 = st.columns(3)
        m1.metric("images / s", f"{prog.images_per_s:.1f}" if prog.images_per_s else "–")
        m2.metric("ETA", "done" if prog.done else _fmt_s(prog.eta_s) if status.running else "–")
        last_val = prog.epoch_records[-1].get("val", {}) if prog.epoch_records else {}
        m3.metric("val accuracy / balanced", f"{last_val['accuracy']:.0%} / {last_val['balanced_accuracy']:.0%}"
                  if "accuracy" in last_val and "balanced_accuracy" in last_val else "–")
        for w in prog.warnings:
            st.warning(w, icon=":material/warning:")
        colour = colour_for(Path(job.run_dir).name, prog.method, shipped=False)
        if prog.steps or prog.epoch_records:
            g1, g2 = st.columns(2)
            g1.plotly_chart(plots.loss_figure(prog.steps, prog.epoch_records, colour=colour), key="loss_fig")
            if prog.epoch_records:
                g2.plotly_chart(plots.validation_figure(prog.epoch_records, colour=colour), key="val_fig")
    if status.running:
        if st.button("Cancel job", type="primary", key="cancel"):
            try:
                manager.cancel(job, token=token)
                st.rerun(scope="app")
            except jobs.JobError as exc:
                st.error(str(exc))
    elif status.state == "failed":
        st.error(f"The job ended with exit status {status.returncode}. Last lines of its log below.")
    elif status.state == "done" and job.kind == "train":
        st.success("Training finished. Evaluate the run to see it beside the shipped models in Overview and "
                   "Calibration (it appears in the Stress test's sidebar already).")
        with st.form("evaluate_form"):
            e1, e2 = st.columns(2)
            steps = e1.number_input("PGD steps", 1, 50, 20, key="eval_steps")
            n_boot = e2.number_input("Bootstrap resamples", 50, 5000, 1000, step=50, key="eval_nboot")
            data_text = st.text_area("Data folders (one per line)", "\n".join(job.data), key="eval_data")
            if st.form_submit_button("Evaluate this run", key="evaluate"):
                try:
                    data = ui.parse_roots(data_text)
                    jobs.check_data_folders(data)
                    cmd = jobs.evaluate_command(run_dir=job.run_dir, data=data, steps=int(steps), n_boot=int(n_boot))
                    manager.launch(cmd, kind="evaluate", run_dir=job.run_dir, data=data, token=token,
                                   label=f"evaluate {Path(job.run_dir).name}")
                    st.rerun(scope="app")
                except (ValueError, jobs.JobError) as exc:
                    st.error(str(exc))
    elif status.state == "done" and job.kind == "evaluate":
        st.success("Evaluation finished: the run's results are now in Overview and Calibration.")
        st.page_link("views/overview.py", label="Open the Overview", icon=":material/dashboard:")
    if status.log_tail:
        with st.expander("Job log (last lines)", expanded=status.state == "failed"):
            st.code(status.log_tail[-3000:], language="text")
    if st.session_state.get("_job_was_running") and not status.running:
        st.session_state["_job_was_running"] = False
        st.rerun(scope="app")  # leave polling mode once the job has ended
    st.session_state["_job_was_running"] = status.running


if st.session_state.get("_flash"):
    st.success(st.session_state.pop("_flash"))

current = manager.current()
running = current is not None and manager.is_alive(current)
st.subheader("Current job")
st.fragment(job_panel, run_every=2.0 if running else None)()

st.subheader("Launch a training run")
if running:
    st.caption("A job is running; a new launch will be refused until it ends or is cancelled.")
defaults = TrainConfig()
with st.form("train_form"):
    a, b, c = st.columns(3)
    method = a.selectbox("Method", list(METHODS), format_func=lambda m: f"{m} — {METHODS[m].summary}", key="t_method")
    preset = b.selectbox("Preset", list(PRESETS), index=list(PRESETS).index("smoke"), key="t_preset",
                         format_func=lambda p: f"{p} ({', '.join(f'{k} {v}' for k, v in PRESETS[p].items())})")
    seed = c.number_input("Seed", 0, 2**31 - 1, 0, key="t_seed")
    a, b, c = st.columns(3)
    epochs = a.number_input("Epochs (0 = preset)", 0, 500, 0, key="t_epochs")
    image_size = b.number_input("Image size in px (0 = preset)", 0, 512, 0, step=16, key="t_size")
    eps = c.number_input("PGD eps (L2 at 224 px; robust methods)", 0.0, 16.0, float(defaults.eps), 0.5, key="t_eps")
    data_text = st.text_area("Data (one per line): COVID collections (metadata.csv + images/), CSV manifests, "
                             "ImageFolder trees or MedMNIST .npz files", ui.data_roots_text(), key="t_data")
    arch = st.selectbox("Network", [a.value for a in Arch], key="t_arch",
                        help="resnet18 is the paper's; densenet121 is torchxrayvision's backbone.")
    submitted = st.form_submit_button("Launch training", type="primary", key="launch")

if submitted:
    try:
        data = ui.parse_roots(data_text)
        summary = jobs.check_data_folders(data)
        out = jobs.new_run_dir(method, preset, int(seed))
        cmd = jobs.train_command(method=method, preset=preset, out=out, data=data, seed=int(seed),
                                 epochs=int(epochs) or None, image_size=int(image_size) or None,
                                 eps=float(eps) if METHODS[method].uses_pgd else None,
                                 arch=None if arch == "resnet18" else arch)
        job = manager.launch(cmd, kind="train", run_dir=out, data=data, token=token, label=out.name)
        st.session_state["_flash"] = f"Started {out.name} (pid {job.pid}); data: {summary}."
        st.rerun()
    except (ValueError, jobs.JobError) as exc:
        st.error(str(exc), icon=":material/block:")

history = manager.history()
if history:
    with st.expander(f"Recent jobs ({len(history)})"):
        rows = []
        for j in history:
            s = manager.status(j)
            rows.append({"job": j.label or j.id, "kind": j.kind, "state": s.state,
                         "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(j.started)), "run folder": j.run_dir})
        st.dataframe(pd.DataFrame(rows), hide_index=True)
finished = resultsets.discover_run_models()
if finished:
    st.caption("Finished runs: " + ", ".join(f"`{m.name}`" for m in finished))
