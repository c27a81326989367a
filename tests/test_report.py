"""The HTML run report: content (parsed, no browser), errors, the CLI, and a headless Chromium check."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from untwine.cli import main
from untwine.errors import CheckpointError, ConfigError
from untwine.report import metric_scores, read_run, write_report
from untwine.report.plots import curve_panels

FACTORS = ["shape", "scale", "orientation"]
HOSTILE = '<img src=x onerror=alert(1)>&"$\\frac{$'   # no '/': it is a folder name too


# -- a synthetic run directory ------------------------------------------------------------------------
def _png(width=40, height=20, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def _gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("L", (30, 12), v) for v in (0, 128, 255)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _metrics(mig=0.25, step=60) -> dict:
    return {"step": step,
            "mig": {"mig": mig, "mig_per_factor": [0.5, 0.25, 0.0]},
            "dci": {"disentanglement": 0.625, "completeness": 0.5, "completeness_per_factor": [0.75, 0.5, 0.125],
                    "disentanglement_per_code": [0.1, 0.2, 0.3, 0.4],
                    "importance_matrix": [[0.9, 0.0, 0.1], [0.0, 0.8, 0.2], [0.1, 0.1, 0.7], [0.0, 0.1, 0.0]],
                    "mode": "fast"},
            "mig_sampling": {"skipped": "mig_sampling needs the posteriors of every image"},
            "_meta": {"protocol": "fast", "seed": 0, "dataset": "dsprites", "factors": FACTORS}}


def make_run(root: Path, name: str = "run-a", *, objective="betavae", mig=0.25, run_name="dsprites-betavae",
             seed=0, csv=True, metrics=True, pictures=True) -> Path:
    d = root / name
    (d / "logs").mkdir(parents=True)
    cfg = {"data": {"name": "dsprites"}, "model": {"arch": "conv64", "latent_dim": 4},
           "objective": {"name": objective, "beta": 4}, "controller": {"name": "none"},
           "optim": {"batch_size": 16, "lr": 1e-4}, "trainer": {"steps": 60, "seed": seed}, "run": {"name": run_name}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if csv:
        lines = ["step,loss,recon,kl,beta,set_point,lr,tc"]
        for i, step in enumerate(range(10, 70, 10)):
            lines.append(f"{step},{3000 - 100 * i - seed},{2990 - 100 * i},{0.5 * i + 0.1},4.0,,0.0001,{0.01 * i}")
        (d / "logs" / "train.csv").write_text("\n".join(lines) + "\n")
    if metrics:
        (d / "metrics.json").write_text(json.dumps(_metrics(mig)))
        (d / "metrics.jsonl").write_text(json.dumps(_metrics(mig / 2, step=30)) + "\n")
        (d / "summary.json").write_text(json.dumps({"steps": 60, "start_step": 0, "wall_seconds": 2.5,
                                                    "images_per_second": 400.0, "device": "cpu",
                                                    "precision": "32-true", "cpu_threads": 2}))
    if pictures:
        (d / "pictures").mkdir()
        (d / "pictures" / "reconstructions.png").write_bytes(_png())
        (d / "pictures" / "traversals.gif").write_bytes(_gif())
        (d / "pictures" / "side_by_side.png").write_bytes(_png(60, 30, (20, 120, 20)))
    return d


class _Page(HTMLParser):
    """The page's images, tables (rows of cell texts), headings and any external references."""

    def __init__(self):
        super().__init__()
        self.images, self.tables, self.headings, self.refs, self.scripts = [], [], [], [], []
        self._table = self._row = self._cell = self._heading = None
        self._classes = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.refs.append(a[key])
        if tag == "img":
            self.images.append(a)
        elif tag == "script":
            self.scripts.append(a)
        elif tag == "table":
            self._table = {"class": a.get("class", ""), "rows": []}
            self.tables.append(self._table)
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table["rows"].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None
        elif tag.startswith("h") and tag[1:].isdigit() and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None:
            self._heading.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    return page


def decode_image(src: str) -> tuple[str, bytes]:
    assert src.startswith("data:image/"), src[:40]
    head, _, payload = src.partition(",")
    assert head.endswith(";base64"), head
    return head[5:-7], base64.b64decode(payload, validate=True)


def table_of(page: _Page, css: str) -> dict:
    found = [t for t in page.tables if css in t["class"].split()]
    assert len(found) == 1, [t["class"] for t in page.tables]
    return found[0]


# -- one run ----------------------------------------------------------------------------------------------
def test_single_run_report_has_every_section_and_config_values(tmp_path):
    run = make_run(tmp_path)
    out = write_report([run])
    assert out == run / "report.html"
    text = out.read_text()
    page = parse(out)
    for heading in ("configuration", "training curves", "final metrics", "metrics during training", "pictures"):
        assert heading in page.headings
    assert "comparison" not in page.headings  # one run: nothing to compare
    assert "objective:\n  name: betavae\n  beta: 4" in text  # the resolved config, verbatim
    facts = {r[0]: r[1] for r in table_of(page, "facts")["rows"]}
    assert facts["objective"] == "betavae (beta=4)"
    assert facts["steps"] == "60" and facts["final recon"] == "2490"
    assert facts["config name (run.name)"] == "dsprites-betavae"
    assert facts["device"] == "cpu, 32-true, 2 CPU threads"


def test_page_is_self_contained(tmp_path):
    page = parse(write_report([make_run(tmp_path)]))
    assert page.refs and all(r.startswith(("data:", "#")) for r in page.refs), page.refs
    assert all("src" not in s for s in page.scripts)  # inline script only, nothing fetched


def test_every_image_is_a_valid_data_uri(tmp_path):
    run = make_run(tmp_path)
    page = parse(write_report([run]))
    kinds = []
    for img in page.images:
        mime, data = decode_image(img["src"])
        if mime == "image/svg+xml":
            assert b"<svg" in data
        else:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
            with Image.open(io.BytesIO(data)) as im:
                assert im.format == {"image/png": "PNG", "image/gif": "GIF"}[mime]
                if mime == "image/gif":
                    assert im.n_frames == 3  # the animation is embedded whole, so it plays
        kinds.append(mime)
    # the curves panel + every picture in pictures/ (reconstructions first, the engine's order)
    assert kinds.count("image/png") == 3 and kinds.count("image/gif") == 1
    captions = [img["alt"] for img in page.images]
    assert captions[1:] == ["reconstructions.png", "side_by_side.png", "traversals.gif"]


def test_metrics_tables_with_per_factor_breakdown(tmp_path):
    page = parse(write_report([make_run(tmp_path, mig=0.25)]))
    scores = {r[0]: r[1:] for r in table_of(page, "scores")["rows"][1:]}
    assert scores["mig"][0] == "0.25"
    assert scores["dci"][0] == "0.625" and "completeness=0.5" in scores["dci"][2]
    assert scores["mig"][1] == scores["dci"][1] == "higher"
    assert scores["mig_sampling"][2].startswith("skipped:")
    per_factor = table_of(page, "per-factor")["rows"]
    assert per_factor[0][0] == "factor"
    assert [r[0] for r in per_factor[1:]] == FACTORS
    assert per_factor[1][1:] == ["0.5", "0.75"]  # mig_per_factor, completeness_per_factor of "shape"
    matrix = table_of(page, "matrix")["rows"]
    assert matrix[0] == [""] + FACTORS and matrix[1] == ["z0", "0.9", "0", "0.1"]
    evals = table_of(page, "evals")["rows"]
    assert evals[0] == ["step", "dci", "mig"] and evals[1] == ["30", "0.625", "0.125"]


def test_lists_over_a_subset_of_factors_align_by_name(tmp_path):
    run = make_run(tmp_path)
    record = _metrics()
    record["mig_sampling"] = {"mig": 0.3, "mig_per_factor": [0.4, 0.2], "factor_names": ["scale", "orientation"],
                              "factors_used": [1, 2], "conditional_entropies": [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]}
    (run / "metrics.json").write_text(json.dumps(record))
    page = parse(write_report([run]))
    per_factor = table_of(page, "per-factor")["rows"]
    assert per_factor[0][-1] == "mig_samplingmig_per_factor"
    assert [r[-1] for r in per_factor[1:]] == ["—", "0.4", "0.2"]  # shape was not scored
    entropies = [t["rows"] for t in page.tables if "matrix" in t["class"].split()][1]
    assert entropies[0] == ["", "z0", "z1", "z2", "z3"] and entropies[1][:2] == ["scale", "1"]


def test_unknown_nested_sections_render_as_tables(tmp_path):
    run = make_run(tmp_path)
    multistage = {"step": 60, "stage1": _metrics(0.25), "combined": {**_metrics(0.25), "psnr": 21.5},
                  "reconstruction": {"stage1": {"bce": 80.0, "mse": 0.02}, "combined": {"bce": 40.0, "mse": 0.01}},
                  "surprise": {"flag": True, "names": ["a", "b"], "deep": {"deeper": {"x": [1, "y"]}}},
                  "note": "hello", "_private": {"ignored": 1}}
    (run / "metrics.json").write_text(json.dumps(multistage))
    (run / "pictures" / "extra_plot.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" '
                                                     'height="10"><rect width="10" height="10"/></svg>')
    out = write_report([run])
    page = parse(out)
    for heading in ("stage1", "combined", "reconstruction: stage 1 against the combined model"):
        assert heading in page.headings
    assert "hello" in out.read_text()
    assert "side_by_side.png" in [i["alt"] for i in page.images]
    assert "extra_plot.svg" in [i["alt"] for i in page.images]
    assert metric_scores(multistage) == {
        "stage1/mig": 0.25, "stage1/dci": 0.625, "combined/mig": 0.25, "combined/dci": 0.625,
        "combined/psnr": 21.5, "reconstruction/stage1/bce": 80.0, "reconstruction/stage1/mse": 0.02,
        "reconstruction/combined/bce": 40.0, "reconstruction/combined/mse": 0.01}


def test_metric_scores_take_the_protocols_headline():
    record = {"step": 5, "mig": {"mig": 0.3, "mig_per_factor": [0.1]}, "dci": {"completeness": 0.9,
              "disentanglement": 0.4}, "unsupervised": {"gaussian_total_correlation": 2.0, "mutual_info_score": 1.0},
              "mig_sampling": {"skipped": "why"}, "_meta": {"seconds": {"total": 3.0}}}
    assert metric_scores(record) == {"mig": 0.3, "dci": 0.4, "unsupervised": 2.0}
    assert metric_scores(None) == {}


def test_curves_draw_one_panel_per_term_with_the_set_point_beside_kl(tmp_path):
    log = read_run(make_run(tmp_path)).log
    assert "set_point" not in log  # never logged (no controller): drawn nowhere
    log["set_point"] = [0.5] * len(log["kl"])
    assert curve_panels(log) == [("loss", ["loss"]), ("recon", ["recon"]), ("kl", ["kl", "set_point"]),
                                 ("beta", ["beta"]), ("lr", ["lr"]), ("tc", ["tc"])]


def test_hostile_names_are_escaped(tmp_path):
    runs = [make_run(tmp_path, HOSTILE, run_name="</script><b>bold</b>"), make_run(tmp_path, "plain", seed=1)]
    out = write_report(runs, tmp_path / "cmp.html")  # the comparison charts draw the name in a legend
    text = out.read_text()
    assert "<img src=x" not in text and "<b>bold</b>" not in text and "</script><b>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;&quot;$\\frac{$" in text
    assert "&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in text
    page = parse(out)
    assert HOSTILE in page.headings and len(page.scripts) == 1


# -- several runs ---------------------------------------------------------------------------------------------
def _side(page) -> tuple[list[str], dict[str, list[str]]]:
    """The comparison's run names (its header) and {row label: a cell per run}."""
    rows = table_of(page, "comparison")["rows"]
    return rows[0][1:], {r[0]: r[1:] for r in rows[1:]}


def test_comparison_has_one_column_per_run(tmp_path):
    runs = [make_run(tmp_path, "a", mig=0.1), make_run(tmp_path, "b", objective="betatcvae", mig=0.2, seed=1),
            make_run(tmp_path, "c", mig=0.3, seed=2, metrics=False)]
    out = write_report(runs, tmp_path / "out" / "cmp.html")
    page = parse(out)
    names, rows = _side(page)
    assert names == ["a", "b", "c"]
    assert rows["model"] == ["betavae (beta=4)", "betatcvae (beta=4)", "betavae (beta=4)"]
    assert rows["mig"] == ["0.1", "0.2", "—"]  # c has no metrics
    assert rows["final loss (lower is better)"] == ["2500", "2499", "2498"]
    assert rows["metrics protocol"] == ["fast", "fast", "-"]
    assert "fast protocol: smaller samples" in out.read_text()  # said where each run's scores are
    # comparison bars (mig differs) + overlaid curves, then each run's curves and pictures
    assert len(page.images) == 2 + 3 * 4
    for img in page.images:
        decode_image(img["src"])
    assert sum(h in ("a", "b", "c") for h in page.headings) == 3


def _stages(bce1=1342.25, bce2=756.5, flow=False) -> dict:
    recon1 = {"bce": bce1, "bce_floor": 0.0, "bce_excess": bce1, "mse": 0.085, "psnr": 10.7, "ssim": 0.0067,
              "elbo_sampled": -629.96, "iwae": -579.06, "iwae_samples": 10}
    recon2 = {**recon1, "bce": bce2, "bce_excess": bce2, "mse": 0.0436, "psnr": 13.85, "elbo_sampled": -717.8,
              "iwae": -647.1, "reconstruction_applicable": not flow}
    if flow:
        recon2.update(bce=0.0, bce_excess=0.0, mse=0.0, psnr=None, log_p_x_given_y=512.5)
    return {"stage1": {"reconstruction": recon1, "samples": {"fd": 40.0, "precision": 0.5, "recall": 0.25, "n": 512},
                       "factor_accuracy": {"shape": 0.5, "mean": 0.625}},
            "combined": {"reconstruction": recon2, "samples": {"fd": 20.0, "precision": 0.75, "recall": 0.5, "n": 512},
                         "factor_accuracy": {"shape": 0.75, "mean": 0.875},
                         "w_invariance": {"overall": 0.03, "held_overall": 0.01, "n": 512}},
            "summary": {"bce_ratio": None if flow else bce2 / bce1, "bce_excess_ratio": None if flow else bce2 / bce1,
                        "reconstruction_applicable": not flow, "fd_ratio": 0.5, "w_change": 0.03,
                        "w_change_held": 0.01, "code_change": 0.002},
            "n": 512, "seed": 0}


def make_stage2_run(root: Path, stage1: Path, name="stage2", flow=False) -> Path:
    d = make_run(root, name, objective="multistage", run_name="demo-stage2")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["stage1"] = {"run": str(stage1)}
    cfg["stage2"] = {"name": "flow" if flow else "vae", "w_dim": 16}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    record = {**_metrics(), "multistage": _stages(flow=flow)}
    (d / "metrics.json").write_text(json.dumps(record))
    return d


def test_the_demos_comparison_is_compact_and_puts_stage_1_beside_the_combined_model(tmp_path):
    """Issue 25: no bar chart of one bar per multistage/* key, no empty bce_floor panel, no bce_excess
    repeating the BCE of binary images, stage 2's KL of w in its own row, a table that fits a laptop."""
    first = make_run(tmp_path, "stage1", objective="betatcvae", run_name="demo-stage1")
    second = make_stage2_run(tmp_path, first)
    out = write_report([first, second], tmp_path / "report.html")
    page = parse(out)
    names, rows = _side(page)
    assert names == ["stage1", "stage2"]
    assert rows["final KL of z (stage 1)"] == ["2.6", "—"] and rows["final KL of w (stage 2)"] == ["—", "2.6"]
    assert rows["model"][1] == "stage 2 (vae, w_dim 16) on stage1"
    assert not any(k.startswith("multistage") for k in rows)  # the stage comparison has its own table
    stages = [t for t in page.tables if "stages" in t["class"].split()]
    body = {r[0]: r[1:] for r in stages[0]["rows"][1:]}
    assert body["reconstruction BCE (nats/image)"] == ["1342.2", "756.5", "lower"]
    assert body["ELBO, sampled (nats)"] == ["-630.0", "-717.8", "higher"]
    assert body["samples: Frechet distance"] == ["40", "20", "lower"]
    assert body["BCE ratio, combined / stage 1"] == ["", "0.5636", "lower"]
    assert body["w changes factor predictions (share)"] == ["", "0.03", "lower"]
    assert "BCE above the images' entropy" not in body and "excess-BCE ratio, combined / stage 1" not in body
    assert "stage2: stage 1 against the combined model" in page.headings
    # equal disentanglement scores (stage 2 keeps the code): no bar chart, only the curves
    captions = [i["alt"] for i in page.images]
    assert captions[0].startswith("reconstruction and KL of every run")
    assert not any(c.startswith("headline score") for c in captions)


def test_a_flows_reconstruction_is_not_applicable(tmp_path):
    first = make_run(tmp_path, "stage1")
    page = parse(write_report([first, make_stage2_run(tmp_path, first, flow=True)], tmp_path / "r.html"))
    stages = [t for t in page.tables if "stages" in t["class"].split()][0]
    body = {r[0]: r[1:] for r in stages["rows"][1:]}
    assert body["reconstruction BCE (nats/image)"][1] == "n/a (bijective)"
    assert body["log p2(x | y), stage 2 given y (nats)"] == ["—", "512.5", "higher"]
    assert body["BCE ratio, combined / stage 1"][1] == "n/a (bijective)"


def test_several_runs_default_to_report_html_in_the_working_directory(tmp_path, monkeypatch):
    runs = [make_run(tmp_path, "a"), make_run(tmp_path, "b")]
    monkeypatch.chdir(tmp_path)
    assert write_report(runs) == Path("report.html") and (tmp_path / "report.html").is_file()


def test_same_folder_names_are_told_apart(tmp_path):
    runs = [make_run(tmp_path / "x", "run"), make_run(tmp_path / "y", "run")]
    page = parse(write_report(runs, tmp_path / "cmp.html"))
    assert _side(page)[0] == [str(r) for r in runs]


# -- gaps and errors ---------------------------------------------------------------------------------------------
def test_missing_pieces_are_said_on_the_page(tmp_path):
    run = make_run(tmp_path, csv=False, metrics=False, pictures=False)
    out = write_report([run])
    text = out.read_text()
    assert "no training curves" in text and "no final metrics" in text and "no pictures" in text
    assert "metrics.json is missing" in text and "logs/train.csv is missing" in text
    assert parse(out).images == []


def test_unreadable_files_are_reported_not_raised(tmp_path):
    run = make_run(tmp_path)
    (run / "metrics.json").write_text('{"mig": {"mig": 0.2')
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "mig": {"mig": 0.1}}) + "\n{torn")
    (run / "logs" / "train.csv").write_text("step,loss\n")
    (run / "pictures" / "broken.png").write_bytes(b"not a png")
    text = write_report([run]).read_text()
    assert "metrics.json could not be read" in text and "1 unreadable line(s) skipped" in text
    assert "has no logged rows yet" in text and "broken.png is not a readable picture" in text


def test_not_a_run_directory_is_a_checkpoint_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match="nowhere.*not a run directory"):
        write_report([missing])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"empty/config\.yaml.*is missing"):
        write_report([make_run(tmp_path), empty], tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()
    with pytest.raises(ConfigError, match="at least one run directory"):
        write_report([])


# -- the command ---------------------------------------------------------------------------------------------
def test_cli_writes_the_report_and_prints_its_path(tmp_path, capsys):
    runs = [make_run(tmp_path, "a"), make_run(tmp_path, "b")]
    out = tmp_path / "both.html"
    assert main(["report", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert _side(parse(out))[0] == ["a", "b"]
    assert main(["report", str(runs[0])]) == 0
    assert capsys.readouterr().out.strip() == str(runs[0] / "report.html")


def test_cli_bad_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "untwine: error:" in err and "nope" in err and "not a run directory" in err


# -- in a real browser ---------------------------------------------------------------------------------------------
def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# records script errors and failed loads from the very start of the page
PROBE_HEAD = """<script>window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(e.message || ('failed to load ' + ((e.target && e.target.tagName) || '?')));
}, true);
var __consoleError = console.error;
console.error = function () { window.__errors.push([].join.call(arguments, ' ')); __consoleError.apply(console, arguments); };
</script>"""
# after load: every picture decoded? does a click open the full-size view, Escape close it? does any
# table need a scroll bar at this width? results into the DOM
PROBE_TAIL = """<script>window.addEventListener('load', function () {
  var imgs = [].slice.call(document.querySelectorAll('main img'));
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; });
  var box = document.getElementById('lightbox');
  imgs[0].click();
  var opened = box !== null && !box.hidden && box.querySelector('img').src === imgs[0].src;
  document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}));  // closed again for the screenshot
  var closed = box !== null && box.hidden;
  var scrolling = [].slice.call(document.querySelectorAll('div.scroll')).filter(function (d) {
    return d.scrollWidth > d.clientWidth + 1; }).map(function (d) { return d.firstChild.className || 'table'; });
  var pre = document.createElement('pre');
  pre.id = 'probe-result';
  pre.textContent = JSON.stringify({images: imgs.length, broken: broken, opened: opened, closed: closed,
    errors: window.__errors, scrolling: scrolling, page_wider: document.documentElement.scrollWidth > window.innerWidth,
    title: document.title});
  document.body.appendChild(pre);
});</script>"""
LAPTOP = (1366, 2400)  # a laptop's width; tall enough that the screenshot holds the page's first sections


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def need_chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("CI is set but no chromium binary was found: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium binary (apt-get install chromium); CI=true makes this a failure")
    return binary


def screenshot_dir(tmp_path: Path) -> Path:
    """Where the screenshots are kept for a person to look at: $UNTWINE_SCREENSHOTS, else
    /tmp/untwine-report-screenshots (a read-only /tmp: the test's own tmp_path only)."""
    folder = Path(os.environ.get("UNTWINE_SCREENSHOTS") or "/tmp/untwine-report-screenshots")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:
        return tmp_path


def browse(binary: str, page: Path, shot: Path, size=LAPTOP) -> dict:
    """Open a report in headless Chromium at `size`: the probe's findings, and a screenshot at `shot`."""
    html = page.read_text()
    probe = page.with_name(page.stem + "-probe.html")
    probe.write_text(html.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1))
    # one browser start for both: the DOM after the probe ran, and a screenshot of the page
    dom = _chromium(binary, page.parent / f"profile-{page.stem}", "--virtual-time-budget=5000", "--hide-scrollbars",
                    f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    start = dom.stdout.find('<pre id="probe-result">')
    assert start >= 0, f"the probe did not run: {dom.stdout[-500:]!r} {dom.stderr[-1500:]}"
    raw = dom.stdout[start + len('<pre id="probe-result">'):dom.stdout.index("</pre>", start)]
    result = json.loads(raw.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert result["images"] == len(parse(page).images)
    assert result["broken"] == [] and result["errors"] == [], result
    assert result["opened"] and result["closed"], result
    assert shot.is_file(), dom.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == tuple(size)
        assert len(im.convert("L").getcolors(maxcolors=1 << 16) or [None] * 99) > 20  # not a blank page
    return result


def _table_model_dir(root: Path) -> Path:
    """A model directory as `untwine tabular fit` leaves it: stage 1's run (a table's), the fit's pictures."""
    import pandas as pd

    from untwine.tabular import interpret
    model = root / "adult-model"
    run = make_run(model, "stage1_run", run_name="tabular-stage1", metrics=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"], cfg["model"] = {"name": "table"}, {"arch": "mlp", "latent_dim": 4, "likelihood": "mixed"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "summary.json").write_text(json.dumps({"steps": 60, "wall_seconds": 2.5, "images_per_second": 900.0}))
    (run / "metrics.json").write_text(json.dumps({"step": 60, "stage_variance": {
        "stage1": 0.56, "stage2_added": 0.31, "combined": 0.87}}))
    for p in (run / "pictures").iterdir():
        p.unlink()
    effects = pd.DataFrame({"age (SD)": [2.3, 0.1, 1.9, 0.0], "income (SD)": [4.2, 0.0, 2.9, 0.1],
                            "P(job=teacher)": [0.36, 0.04, 0.37, 0.0], "joined (SD)": [0.1, 2.3, 0.1, 0.0]},
                           index=[f"z{j}" for j in range(4)])
    interpret.save_heatmap(effects, run / "pictures" / "traversal_heatmap.png",
                           "effect of each latent on each column: the range of the decoded value (in the column's "
                           "standard deviations) or probability as z_j moves over the codes' 95% range; each "
                           "column coloured on its own scale", per_column=True)
    stages = pd.DataFrame({"span": ["age.alpha", "age.mode", "job.category", "score.missing"],
                           "column": ["age", "age", "job", "score"], "stage1": [0.93, 0.7, 0.8, 0.2],
                           "stage2_added": [0.01, 0.23, 0.12, 0.7]})
    interpret.save_stage_variance(stages, run / "pictures" / "stage_variance.png")
    return model


def test_reports_render_in_headless_chromium(tmp_path):
    """The demo's comparison (stage 1 beside stage 2), a run report and a table model's report, looked
    at in a real browser at a laptop's width: pictures decode, the lightbox works, no script error, no
    table needs a scroll bar; the screenshots are kept (screenshot_dir) for a person to look at."""
    from untwine.tabular.commands import _report as table_report

    binary = need_chromium()
    keep = screenshot_dir(tmp_path)
    first = make_run(tmp_path, "stage1", objective="betatcvae", run_name="demo-stage1")
    # a real-sized picture, so that the screenshot shows scaling too
    rng = np.random.default_rng(0)
    (first / "pictures" / "reconstructions.png").write_bytes(
        _png(900, 300, tuple(int(v) for v in rng.integers(0, 255, 3))))
    second = make_stage2_run(tmp_path, first)
    pages = {"demo-comparison": write_report([first, second], tmp_path / "demo" / "report.html"),
             "run": write_report([first]),
             "table-model": table_report(_table_model_dir(tmp_path))}
    seen = {}
    for name, page in pages.items():
        shot = tmp_path / f"{name}.png"
        seen[name] = browse(binary, page, shot)
        shutil.copyfile(shot, keep / f"{name}.png")
    assert seen["demo-comparison"]["images"] == 1 + 2 * 4  # the curves (equal scores: no bars), each run's 4
    for name, result in seen.items():
        assert result["scrolling"] == [] and not result["page_wider"], (name, result)
    assert seen["table-model"]["title"] == "untwine tabular model: adult-model"
    try:
        shutil.copyfile(tmp_path / "demo-comparison.png", "/tmp/untwine-report-screenshot.png")
    except OSError:
        pass  # a read-only /tmp only loses the lead's copy
    print(f"screenshots: {', '.join(str(keep / f'{n}.png') for n in pages)}")


@pytest.mark.slow
def test_the_real_demo_and_table_reports_render_in_headless_chromium(tmp_path):
    """The same look at what `untwine demo` and `untwine tabular fit` really write (short runs)."""
    from untwine.tabular.demo import demo_table

    binary = need_chromium()
    keep = screenshot_dir(tmp_path)
    assert main(["demo", "trainer.steps=30", "trainer.log_every=10", "--run-dir", str(tmp_path / "demo")]) == 0
    data = tmp_path / "table.csv"
    demo_table(300).to_csv(data, index=False)
    assert main(["tabular", "fit", str(data), "--out", str(tmp_path / "table-model"), "--steps", "60",
                 "--stage2-steps", "40", "--latent-dim", "4"]) == 0
    pages = {"real-demo-comparison": tmp_path / "demo" / "report.html",
             "real-run": tmp_path / "demo" / "stage1" / "report.html",
             "real-table-model": tmp_path / "table-model" / "report.html"}
    for name, page in pages.items():
        result = browse(binary, page, tmp_path / f"{name}.png")
        shutil.copyfile(tmp_path / f"{name}.png", keep / f"{name}.png")
        assert result["scrolling"] == [] and not result["page_wider"], (name, result)
    page = parse(pages["real-demo-comparison"])
    assert "stage2: stage 1 against the combined model" in page.headings


# -- the console: the end-of-run table and `untwine evaluate` (issue 25, items 1 and 2) ----------------------
def test_numbers_print_as_a_reader_expects():
    from untwine.report.console import better, number
    assert [number(v) for v in (512, 6.0, 0.0, 0.000123, 1.2e-7, 0.12345, -629.96, 1342.25, None, True)] == \
        ["512", "6", "0", "0.000123", "1.2e-07", "0.1235", "-630.0", "1342.2", "-", "yes"]
    assert [better(k) for k in ("bce", "multistage/summary/fd_ratio", "w_change", "gaussian_total_correlation",
                                "mig", "psnr", "n", "bce_floor")] == ["lower"] * 4 + ["higher"] * 2 + [""] * 2


def test_end_of_run_table_shows_stage_2_and_the_protocol(capsys, monkeypatch):
    from untwine.train.commands import _print_summary
    monkeypatch.setenv("COLUMNS", "200")
    metrics = {**_metrics(), "factor_vae": {"train_accuracy": 0.75, "eval_accuracy": 0.5, "num_active_dims": 6},
               "multistage": _stages()}
    _print_summary({"run_dir": "/nowhere", "steps": 60, "wall_seconds": 2.0, "final_terms": {"loss": 1.5},
                    "metrics": metrics})
    out = capsys.readouterr().out
    assert "evaluation: disentanglement, fast protocol" in out and "fast protocol: smaller samples" in out
    assert "num_active_dims 6" in out and "6.000" not in out
    assert "stage 1 against the combined model (512 held-out images)" in out
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in out.splitlines() if line.count("│") >= 5}
    assert lines["reconstruction BCE (nats/image)"] == ["1342.2", "756.5", "lower"]
    assert lines["samples: Frechet distance"] == ["40", "20", "lower"]
    assert lines["BCE ratio, combined / stage 1"] == ["", "0.5636", "lower"]
    assert lines["factor accuracy (mean)"] == ["0.625", "0.875", "higher"]
    assert "multistage" not in lines and "n" not in lines and "seed" not in lines
    assert not any("0.…" in line or "512.000" in line for line in out.splitlines())


def test_the_protocol_is_recorded_and_named_by_evaluate(tmp_path, capsys, monkeypatch):
    from untwine.metrics import evaluate_arrays
    from untwine.metrics.protocol import resolve_metrics
    from untwine.report.console import protocol_of
    rng = np.random.default_rng(0)
    factors = rng.integers(0, 4, size=(300, 2))
    codes = factors + 0.1 * rng.standard_normal((300, 2))
    assert evaluate_arrays(codes, factors, metrics="fast")["_meta"]["protocol"] == "fast"
    assert evaluate_arrays(codes, factors, metrics="mig,dci")["_meta"]["protocol"] == "custom"
    assert evaluate_arrays(codes, factors, metrics="fast", overrides={"mig": {"num_bins": 5}}
                           )["_meta"]["protocol"] == "custom"
    assert protocol_of({"params": resolve_metrics("standard")}) == "standard"  # a file from before the key
    np.savez(tmp_path / "codes.npz", codes=codes, factors=factors)
    monkeypatch.setenv("COLUMNS", "200")
    out_json = tmp_path / "scores.json"
    assert main(["evaluate", str(tmp_path / "codes.npz"), "--metrics", "mig,dci", "--out", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "untwine evaluate: disentanglement, custom protocol" in out and "custom protocol: mig" in out
    assert json.loads(out_json.read_text())["_meta"]["protocol"] == "custom"
