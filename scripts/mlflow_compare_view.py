"""The MLflow compare view of this project's runs, for `scripts/mlflow-compare-screenshot.sh`.

Two steps, so that the checks run (and fail clearly) before any server or browser starts:

``plan URI EXPERIMENT``
    Checks the store: the experiment exists and at least two of its runs carry every metric of :data:`METRICS`
    (runs without them, e.g. killed or not yet evaluated, are named on stderr). Prints a JSON plan: the
    experiment id and the runs the page will show (those with :data:`SORT_METRIC`), best first.
``shoot PLAN_JSON BASE_URL OUTPUT``
    Drives headless Chromium over the DevTools protocol (``--remote-debugging-pipe``, standard library only).
    Before the page's own scripts run it writes the experiment page's view state into ``localStorage``:
    the runs table (not the charts), the columns below, the search filter ``metrics.test_rougeL >= 0``,
    sorted by test ROUGE-L, best first; the MLflow Assistant panel closed and not auto-opened, its floating
    button hidden by CSS; the "Model training" workflow. Then it opens the runs page, waits until the table
    shows the runs and every expected column inside the window, collapses the global side bar (its "Toggle
    sidebar" button), checks that no assistant panel shows, and saves a PNG cropped below the last row.

The view: one row per evaluated run, the fixed columns (run name ``<cell>-<precision>-<workers>w``, created,
duration), then ``train.cell`` and :data:`METRICS`, nothing else; the training loss is not shown. The
``localStorage`` keys and the column ids are the MLflow UI's own, read from its source (MLflow 3.17). If a
later UI renames them, the page falls back to its default view and ``shoot`` fails naming the columns it did
not find, instead of saving a screenshot of the wrong view.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

# What people compare runs on, in column order: metric key -> what it is.
METRICS = {
    "test_rougeL": "test ROUGE-L F1 of the model (evaluate stage)",
    "test_lead_rougeL": "test ROUGE-L of the best lead-N baseline (evaluate stage)",
    "best_val_perplexity": "validation perplexity of the kept (best) epoch (train stage)",
}
PARAMS = ("train.cell",)  # GRU or LSTM
SORT_METRIC = "test_rougeL"  # best first
MAX_ROWS = 16  # at most this many rows (the best) fit in the screenshot
COLUMN_WIDTH = 150  # pixels, so that the metric names show whole
# The runs table's own first columns (ids of MLflow 3.17's UI): selection box, run name, created, duration.
FIXED_COLUMNS = ("0", "attributes.`Run Name`", "runDateAndNestInfo", "duration")

WINDOW = (1200, 900)  # CSS pixels; the screenshot is cropped to the table's height
SCALE = 2  # device pixels per CSS pixel: sharp text when the README scales the image down
TIMEOUT_SECONDS = 90


# --- plan ------------------------------------------------------------------------------------------------


def plan(uri: str, experiment_name: str) -> dict[str, Any]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise SystemExit(f"no experiment {experiment_name!r} in {uri}: run the pipeline first")
    runs = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=200
    )
    complete, incomplete = [], []
    for run in runs:
        missing = [name for name in METRICS if name not in run.data.metrics]
        (incomplete if missing else complete).append((run, missing))
    for run, missing in incomplete:
        print(
            f"left out run {run.info.run_name} ({run.info.run_id}, {run.info.status}): "
            f"no {', '.join(missing)}",
            file=sys.stderr,
        )
    if len(complete) < 2:
        raise SystemExit(
            f"the compare view needs at least 2 runs with the metrics {', '.join(METRICS)}; "
            f"experiment {experiment_name!r} in {uri} has {len(complete)} of {len(runs)} runs: "
            "train and evaluate at least two (e.g. dvc repro, then dvc exp run -S train.cell=lstm)"
        )
    scored = [run for run in runs if SORT_METRIC in run.data.metrics]
    scored.sort(key=lambda run: -run.data.metrics[SORT_METRIC])
    return {
        "experiment_id": experiment.experiment_id,
        # the rows the page shows (the search filter's runs), best first
        "runs": [
            {"id": run.info.run_id, "name": run.info.run_name, "cell": run.data.params.get("train.cell", "")}
            for run in scored
        ],
    }


# --- the page's state ------------------------------------------------------------------------------------


def column_key(kind: str, name: str) -> str:
    """The runs table's column key, as the MLflow UI builds it: ``metrics.`test_rougeL```."""
    return f"{kind}.`{name}`"


def evaluated_filter() -> str:
    """The runs shown: those the evaluate stage scored (the search box shows this, so it reads plainly)."""
    return f"metrics.{SORT_METRIC} >= 0"


def local_storage(plan_: dict[str, Any]) -> dict[str, str]:
    """The localStorage entries the MLflow 3 UI reads on load (keys from its source, MLflow 3.17)."""
    experiment_ids = json.dumps([plan_["experiment_id"]])
    metric_columns = [column_key("metrics", name) for name in METRICS]
    page_state = {
        # search facets
        "searchFilter": evaluated_filter(),
        "orderByKey": column_key("metrics", SORT_METRIC),
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        # UI state
        "selectedColumns": [*(column_key("params", name) for name in PARAMS), *metric_columns],
        # the UI applies widths only to the columns in columnOrder, so the fixed columns come first, as shown
        "columnOrder": [*FIXED_COLUMNS, *(column_key("params", name) for name in PARAMS), *metric_columns],
        "columnWidths": {key: COLUMN_WIDTH for key in metric_columns},
        "runListHidden": False,
        "viewMaximized": False,
        "autoRefreshEnabled": False,
    }
    return {
        f"MLflowLocalStorage-1.1-ExperimentPage-{experiment_ids}-ReactComponentState": json.dumps(page_state),
        "mlflow.assistant.panelOpen_v1": "false",
        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
        "mlflow.workflowType_v1": json.dumps("machine_learning"),
        "_mlflow_dark_mode_toggle_enabled": "false",
    }


# A second guard: hides what the UI marks as the assistant's (its floating button and its panel).
HIDE_CSS = "[data-assistant-ui] { display: none !important; }"


def preload_script(origin: str, entries: dict[str, str]) -> str:
    return f"""
(() => {{
  if (location.origin !== {json.dumps(origin)}) return;
  const entries = {json.dumps(entries)};
  for (const [key, value] of Object.entries(entries)) localStorage.setItem(key, value);
  const style = () => {{
    const element = document.createElement('style');
    element.textContent = {json.dumps(HIDE_CSS)};
    document.head.appendChild(element);
  }};
  if (document.head) style(); else document.addEventListener('DOMContentLoaded', style);
}})();
"""


def page_url(base_url: str, plan_: dict[str, Any]) -> str:
    query = urllib.parse.urlencode({"compareRunsMode": "TABLE", "workflowType": "machine_learning"})
    return f"{base_url}/#/experiments/{plan_['experiment_id']}/runs?{query}"


# Runs in the page: what it shows, to wait for and to check.
PROBE = r"""
(() => {
  const header = document.querySelector('.ag-header');
  const headers = header ? header.innerText.split('\n').map(text => text.trim()).filter(Boolean) : [];
  const rows = [...document.querySelectorAll('.ag-center-cols-container .ag-row')].length;
  // the assistant's panel, if it shows (innerText leaves out what CSS hides)
  const assistant = /MLflow Assistant|Ask questions about your experiments/.test(document.body.innerText);
  const spinners = document.querySelectorAll(
    '[data-testid*=spinner], .ant-spin-spinning, [role=progressbar]').length;
  const table = document.querySelector('.ag-root-wrapper');
  const box = table ? table.getBoundingClientRect() : null;
  let bottom = 0;
  for (const row of document.querySelectorAll('.ag-center-cols-container .ag-row')) {
    bottom = Math.max(bottom, row.getBoundingClientRect().bottom);
  }
  const cells = [...document.querySelectorAll('.ag-header-cell[col-id]')];
  const columns = cells.map(element => element.getAttribute('col-id'));
  // columns cut off at the right edge of the window
  const clipped = cells.filter(element => element.getBoundingClientRect().right > window.innerWidth + 1)
    .map(element => element.innerText.trim());
  return JSON.stringify({headers, columns, clipped, rows, assistant, spinners, tableTop: box && box.top,
                         rowsBottom: bottom, text: document.body.innerText.slice(0, 4000)});
})()
"""


COLLAPSE_SIDEBAR = r"""
(() => {
  const button = document.querySelector('button[aria-label="Toggle sidebar"]');
  if (!button) return false;
  button.click();
  return true;
})()
"""


# --- a DevTools protocol client over --remote-debugging-pipe ---------------------------------------------


class Browser:
    def __init__(self, chromium: str, profile: str, window: tuple[int, int]):
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()
        # the browser reads commands on fd 3 and writes replies on fd 4: the shell puts the pipes there
        arguments = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
            f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", "about:blank",
        ]  # fmt: skip
        redirect = f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write}'
        self.process = subprocess.Popen(
            ["bash", "-c", redirect, chromium, *arguments],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_browser_read, from_browser_write),
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._read], [], [], remaining)[0]:
                raise TimeoutError("Chromium did not answer the DevTools protocol in 60 s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium exited")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write)
        os.close(self._read)


def evaluate(browser: Browser, session: str, expression: str) -> Any:
    result = browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
    return result.get("result", {}).get("value")


def shoot(plan_: dict[str, Any], base_url: str, output: Path, chromium: str = "chromium") -> None:
    origin = urllib.parse.urlsplit(base_url)._replace(path="", query="", fragment="").geturl()
    expected_headers = [*PARAMS, *METRICS]
    expected_rows = min(len(plan_["runs"]), MAX_ROWS)
    with tempfile.TemporaryDirectory(prefix="mlflow-compare-") as profile:
        browser = Browser(chromium, profile, WINDOW)
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            browser.call("Page.enable", session=session)
            browser.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": SCALE, "mobile": False},
                session,
            )
            browser.call(
                "Page.addScriptToEvaluateOnNewDocument",
                {"source": preload_script(origin, local_storage(plan_))},
                session,
            )
            browser.call("Page.navigate", {"url": page_url(base_url, plan_)}, session)
            deadline = time.monotonic() + TIMEOUT_SECONDS
            state: dict[str, Any] = {}
            stable = 0
            while time.monotonic() < deadline:
                time.sleep(1)
                state = json.loads(evaluate(browser, session, PROBE) or "{}")
                if state.get("assistant"):
                    raise SystemExit(
                        "the MLflow Assistant panel shows in the page (a newer UI may keep it open under "
                        "other localStorage keys: see scripts/mlflow_compare_view.py); no screenshot saved"
                    )
                ready = (
                    all(name in state.get("headers", []) for name in expected_headers)
                    and (state.get("rows") or 0) >= expected_rows
                    and not state.get("spinners")
                )
                stable = stable + 1 if ready else 0
                if stable >= 2:  # two probes in a row: the page has settled
                    break
            else:
                headers = state.get("headers", [])
                missing = [name for name in expected_headers if name not in headers]
                raise SystemExit(
                    f"the MLflow UI did not show the compare view in {TIMEOUT_SECONDS} s: "
                    f"{state.get('rows')} of {expected_rows} rows, columns missing: {missing or 'none'} "
                    f"(headers seen: {headers}). A newer MLflow UI may keep its view state under other "
                    f"keys: see scripts/mlflow_compare_view.py.\nPage text:\n{state.get('text', '')[:1500]}"
                )
            # the global side bar (logo, workflow switch, navigation) takes a sixth of the width: collapse it
            if evaluate(browser, session, COLLAPSE_SIDEBAR):
                time.sleep(1.5)
                state = json.loads(evaluate(browser, session, PROBE) or "{}")
            if os.environ.get("MLFLOW_COMPARE_DEBUG"):
                print(
                    json.dumps({key: value for key, value in state.items() if key != "text"}), file=sys.stderr
                )
            if state.get("assistant"):
                raise SystemExit("the MLflow Assistant panel shows in the page; no screenshot saved")
            clipped = [name for name in expected_headers if name in state.get("clipped", [])]
            if clipped:
                raise SystemExit(f"columns cut off at the window's right edge: {clipped}; widen WINDOW")
            height = int(min(WINDOW[1], max(state.get("rowsBottom") or 0, 300) + 24))
            shot = browser.call(
                "Page.captureScreenshot",
                {"format": "png", "clip": {"x": 0, "y": 0, "width": WINDOW[0], "height": height, "scale": 1}},
                session,
            )
        finally:
            browser.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(base64.b64decode(shot["data"]))


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "plan":
        print(json.dumps(plan(argv[1], argv[2])))
    elif len(argv) == 4 and argv[0] == "shoot":
        shoot(json.loads(argv[1]), argv[2].rstrip("/"), Path(argv[3]), os.environ.get("CHROMIUM", "chromium"))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
