"""The report as markdown and CSV: tables rendered from the rows and verdicts, with text
that says what each number is."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import TYPE_CHECKING, Any, Sequence

from ..config import PAPER_CONFIG
from .records import DATASET_NAMES, SETTING_KEYS, WORST_GROUP, Row, point_label, setting_label, varying_label
from .verdicts import BITE_POINTS, COLLAPSE_SHARE, MIN_VERDICT_SEEDS
from .worst_group import worst_group_rows, worst_group_section, worst_group_table

if TYPE_CHECKING:
    from .report import Tables

CSV_FIELDS = ("origin", "dataset", "method", "backbone", "schedule", "maps", "maps_kind", "role", "input_transform",
              "map_options",
              "n_seeds", "n_stopped", "seeds", "test_acc_mean", "test_acc_std", "worst_group_mean", "worst_group_std",
              "select_on",
              "cam_on_digit", "cam_on_decoy", "grad_on_digit",
              "grad_on_decoy", "map_iou", "map_auroc", "seconds_per_run", "seconds_per_epoch", "epochs",
              "train_subset", "published_acc", "published_source", "run_group")

def _num(v: float | None, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _acc(mean: float | None, std: float | None, n: int) -> str:
    """A single seed has no spread: show its number alone rather than a fake ± 0."""
    if mean is None:
        return "—"
    return f"{mean:.2f}" if n < 2 else f"{mean:.2f} ± {std:.2f}"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def words(rows: Sequence[Row]) -> tuple[str, str]:
    """The object and shortcut words of the rows' data sets when they agree, else generic ones."""
    found = {r.words for r in rows}
    return found.pop() if len(found) == 1 else ("object", "shortcut")


def _data_text(rows: Sequence[Row]) -> list[str]:
    """Per data set, its classes by name and the accuracy of a uniform guess."""
    seen: dict[str, Row] = {}
    for r in rows:
        seen.setdefault(r.dataset, r)
    return [f"- {DATASET_NAMES.get(ds, ds)}: classes {', '.join(r.members[0].classes) or 'unnamed'}"
            + (f" (chance {r.chance:.0f} %)" if r.chance else "") for ds, r in seen.items()]


def _seeds(rows: Sequence[Row]) -> str:
    return ", ".join(map(str, sorted({s for r in rows for s in r.seeds}))) or "none"


def _schedule_text(rows: Sequence[Row]) -> str:
    """lambda0 and E_att of the runs, per method, as recorded (no default restated here)."""
    lambdas, e_att = {}, {}
    for r in rows:
        joint = r.members[0].joint_from
        if r.lambda0 is not None:
            lambdas.setdefault(r.method, f"{r.lambda0:g}" + (" ramped" if joint is not None else ""))
        if joint is not None:
            e_att.setdefault(r.method, joint)
    parts = [f"lambda0 {', '.join(f'{v} ({m})' for m, v in lambdas.items())}" if lambdas else "",
             f"E_att {', '.join(f'{v} ({m})' for m, v in e_att.items())}" if e_att else ""]
    return "; ".join(p for p in parts if p)


#: The paper's settings a report names when the runs keep them (docs/protocol.md §3.5).
PAPER_SETTINGS = ("schedule", "epochs", "batch_size", "lr", "momentum", "weight_decay", "step_size", "gamma", "target",
                  "input_transform", "train_subset", "e_att", "phase1")


def _settings_text(rows: Sequence[Row], settings: dict[str, Any]) -> str:
    """Which settings differ from the paper's, for all runs or between them, and the paper's
    values of all the others: never a paper value for a setting the runs changed."""
    shared, varying = settings["shared"], settings["varying"]
    kept = [k for k in PAPER_SETTINGS if k not in shared and k not in varying]
    paper = ", ".join(f"{k} {'all' if getattr(PAPER_CONFIG, k) is None else getattr(PAPER_CONFIG, k)}"
                      for k in kept) or "none"
    return (f"Settings every run shares that differ from the paper's: "
            f"{', '.join(f'{k} {v}' for k, v in shared.items()) or 'none'}. "
            f"Settings that differ between runs (each row names its own): {', '.join(varying) or 'none'}. "
            f"The paper's (docs/protocol.md §3.5) kept by every run: {paper}. Per method: "
            f"{_schedule_text(rows) or 'no extra term'}. With `train_subset`, validation uses a fifth as many "
            "images.")


#: What a map of each kind is, for records that do not say what their source is made from.
KIND_TEXT = {"annotation": "annotation, known from how the data set was built; not a VLM",
             "image-statistic": "a statistic of the image itself; not a VLM",
             "external": "maps made elsewhere and read from files"}


def _map_sources_text(rows: Sequence[Row]) -> list[str]:
    """One line per map source the rows used, in the source's own words (its record's)."""
    lines, seen = [], set()
    for r in rows:
        m = r.maps
        if m.name == "none" or m.name in seen or m.kind == "vlm":
            continue
        seen.add(m.name)
        lines.append(f"- **{m.name}** ({m.kind}): {m.summary or KIND_TEXT.get(m.kind, m.kind)}.")
    vlm = next((r.maps for r in rows if r.maps.kind == "vlm"), None)
    if vlm and vlm.is_real_vlm:
        lines.append(f"- **{vlm.label}**: {vlm.summary or 'dense CLIP maps'} from `{vlm.weights}`, prompt "
                     f"{vlm.config.get('prompts', {}).get('positive')}.")
    elif vlm:
        lines.append(f"- **{vlm.label}** from `{vlm.weights}`: randomly initialised test weights, so these are "
                     "**not** VLM maps and no row here is a VLM result.")
    else:
        lines.append("- No VLM weights were given (`--vlm`), so there are no VLM rows: **no number in this "
                     "report comes from VLM maps.** The paper's WeCLIP+ maps are not reproduced here.")
    return lines


def _results_table(rows: Sequence[Row]) -> str:
    """Every row; the worst-group column appears when some data set has group labels."""
    groups = any(r.worst_group_mean is not None for r in rows)
    obj, cue = words(rows)
    body = [[DATASET_NAMES.get(r.dataset, r.dataset),
             r.method + _grid_point(r) + (f" ({varying_label(r)})" if varying_label(r) and r.role != "sweep" else "")
             + (f", {r.schedule} schedule" if r.schedule != PAPER_CONFIG.schedule else "")
             + (", worst-group selection" if r.select_on == WORST_GROUP else ""), r.backbone,
             r.maps.label, r.role, str(r.n_seeds) + (f" ({r.n_stopped} diverged)" if r.n_stopped else ""),
             _acc(r.test_acc_mean, r.test_acc_std, r.n_seeds),
             *([_acc(r.worst_group_mean, r.worst_group_std, r.n_seeds) if r.worst_group_mean is not None else "—"]
               if groups else []),
             _num(r.cam_on_digit), _num(r.cam_on_decoy),
             "—" if r.maps.iou is None else f"{r.maps.iou:.2f} / {_num(r.maps.auroc)}", _num(r.seconds_per_run, 0),
             "—" if r.published_acc is None else f"{r.published_acc} (published)"]
            for r in rows if r.role != "sensitivity"]
    return _table(["data set", "method", "backbone", "maps (kind)", "role", "n", "test acc %",
                   *(["worst-group acc %"] if groups else []), f"CAM on {obj}", f"CAM on {cue}", "map IoU / AUROC",
                   "s / run", "published %"], body)


def _grid_point(r: Row) -> str:
    """A sweep's row names its grid point: its rows differ in nothing else."""
    if r.role != "sweep":
        return ""
    c = r.members[0].config
    return f" (λ0 {c.lambda0:g}, E_att {c.e_att}, lr {c.lr:g}, phase 1 {c.phase1})"


def _published_table(published: Sequence[dict[str, Any]]) -> str:
    body = [[p["method"], DATASET_NAMES.get(p["dataset"], p["dataset"]), str(p["published_acc"]),
             "not run here" if p["measured_acc_mean"] is None else
             f"{_acc(p['measured_acc_mean'], p['measured_acc_std'], p['measured_n'])} "
             f"(n={p['measured_n']}; {p['measured_as']})", p["published_source"]] for p in published]
    return _table(["method (published)", "data set", "published test acc %", "measured here", "source"], body)


def _published_section(published: Sequence[dict[str, Any]]) -> list[str]:
    return ["## Published numbers (not measured here)", "",
            "Copied from the papers named; their networks and maps differ from ours where noted. The measured column "
            "is the matching row above.", "", _published_table(published), ""]


def _sensitivity_table(sens: Sequence[dict[str, Any]]) -> str:
    body = [[setting_label(s), s["method"], s["degradation"], f"{s['strength']:g}", _num(s["map_iou"]),
             _num(s["map_auroc"]), _acc(s["test_acc_mean"], s["test_acc_std"], s["n_seeds"]), str(s["n_seeds"])]
            for s in sens]
    return _table(["setting (data set, schedule, backbone)", "method", "degradation", "strength", "map IoU",
                   "map AUROC", "test acc %", "n"], body)


def _bite_table(bites: Sequence[dict[str, Any]]) -> str:
    body = [[setting_label(b), f"{_acc(b['baseline_acc_mean'], b['baseline_acc_std'], b['baseline_n'])} "
             f"(n {b['baseline_n']})", f"{_acc(b['bound_acc_mean'], b['bound_acc_std'], b['bound_n'])} "
             f"(n {b['bound_n']})", f"{b['gap']:+.2f} {_interval(b)}", b["bites"]]
            for b in bites]
    return _table(["setting (data set, schedule, backbone)", "vanilla test acc %", "clean bound %",
                   "bound minus vanilla, points [95 % interval]", "bites"], body)


def _verdict_table(verdict: Sequence[dict[str, Any]], obj: str = "digit", cue: str = "decoy") -> str:
    body = [[setting_label(v),
             f"{_acc(v['baseline_acc_mean'], v['baseline_acc_std'], v['baseline_n'])} ({v['baseline']})",
             v["label"], _acc(v["acc_mean"], v["acc_std"], v["n"]), str(v["n"]),
             f"{v['diff']:+.2f} {_interval(v)}", v["effect"],
             f"{_num(v['cam_on_digit'])} / {_num(v['cam_on_decoy'])} ({_num(v['baseline_cam_on_decoy'])})",
             f"{_num(v['grad_on_digit'])} / {_num(v['grad_on_decoy'])} ({_num(v['baseline_grad_on_decoy'])})"]
            for v in verdict]
    return _table(["setting (data set, schedule, backbone)", "baseline test acc %", "guided method, maps",
                   "test acc %", "n", "difference, points [95 % interval]", "verdict",
                   f"CAM share on {obj} / {cue} (baseline's on {cue})",
                   f"gradient share on {obj} / {cue} (baseline's on {cue})"], body)


def _interval(v: dict[str, Any]) -> str:
    """``v``'s 95 % interval as [low, high]; none where a side has one seed."""
    if math.isnan(v["low"]):
        return "[no interval: one seed on a side]"
    return f"[{v['low']:+.2f}, {v['high']:+.2f}]"


def _vs(v: dict[str, Any] | None) -> str:
    if v is None:
        return "not run"
    return (f"{v['label']}: {_acc(v['acc_mean'], v['acc_std'], v['n'])} (n {v['n']}); "
            f"{v['diff']:+.2f} {_interval(v)}")


def _summary_table(summary: Sequence[dict[str, Any]]) -> str:
    body = [[setting_label(s), f"{_acc(s['baseline_acc_mean'], s['baseline_acc_std'], s['baseline_n'])} "
             f"(n {s['baseline_n']})",
             f"{_acc(s['bound_acc_mean'], s['bound_acc_std'], s['bound_n'])} (n {s['bound_n']})" if s["bound_n"]
             else "not run", _vs(s["best"]), _vs(s["l2l_oracle"]),
             s["effect"] + (f": {s['note']}" if s["note"] else "")]
            for s in summary]
    return _table(["setting (data set, schedule, backbone)", "vanilla test acc %", "clean bound %",
                   "best guided: test acc %; difference [95 % interval]",
                   "paper's loss, oracle maps: test acc %; difference [95 % interval]", "verdict"], body)


def _sweep_text(sw: dict[str, Any]) -> list[str]:
    chosen = point_label(sw["chosen"])
    acc = _acc(sw["test_acc_mean"], sw["test_acc_std"], len(sw["seeds"]))
    reach = ("" if sw["published_acc"] is None else
             f" {sw['reach_published']} of the sweep's {sw['n_runs']} runs reach the published "
             f"{sw['published_acc']:g} % ({sw['published_source']}), each run validation-selected within itself.")
    return ["## Sweep", "",
            f"Grid: {', '.join(f'{k} {v}' for k, v in sw['axes'].items())}; seeds {', '.join(map(str, sw['seeds']))}. "
            f"Chosen on validation alone (best mean selection score over seeds, docs/protocol.md §3.8): {chosen}. "
            f"Its test accuracy: **{acc} %** over {len(sw['seeds'])} seeds.{reach} `sweep.png`: the mean test "
            "accuracy of every grid point (shown after the choice, never used for it) and the distribution of all "
            "runs.", "", *_left_out_text(sw.get("left_out", []))]


def _left_out_text(left_out: Sequence[dict[str, Any]]) -> list[str]:
    """The grid points that could not be chosen: a seed's loss diverged before it had a model."""
    if not left_out:
        return []
    return [f"Left out of the choice ({len(left_out)} grid points; a seed's loss diverged before any epoch it could "
            "select, so the point has no mean over seeds):", "",
            *(f"- {point_label(p['point'])}: {p['why'][0]}" for p in left_out), ""]


def _bound_text(bound: dict[str, Any]) -> list[str]:
    point = point_label(bound["bound_point"])
    return ["### Optimistic bound (test-peeking; not a result)", "",
            f"{bound['label']}. Best mean over seeds: {bound['bound_test_acc_mean']:.2f} % at {point}, from "
            f"{bound['runs_with_saved_weights']} runs' per-epoch weights (`optimistic_bound.json`). It says how much "
            "choosing by test accuracy would inflate a number; compare it with the validation-chosen result above, "
            "never in its place.", ""]


def _bites_section(bites: Sequence[dict[str, Any]]) -> list[str]:
    return ["## Where does the shortcut bite?", "",
            "Each unguided baseline against the clean-MNIST bound of the same network, schedule and training-set "
            f"size. A setting bites when vanilla's mean test accuracy is at least {BITE_POINTS:g} points below the "
            f"bound (with at least {MIN_VERDICT_SEEDS} seeds on each side); the interval is the same Welch "
            "t-interval as the verdict's. Only unguided runs enter this table, so where guided methods are worth "
            "running can be decided from it before any of them has run.", "", _bite_table(bites), ""]


def _verdict_section(tables: Tables) -> list[str]:
    return ["## Verdict: does alignment help?", "",
            "Each guided run against the unguided baseline of the same setting: the difference in test accuracy, "
            "in points, with a 95 % Welch t-interval over seeds (unequal variances; a bootstrap is too narrow "
            "with this few seeds). It helps when the interval lies above 0, hurts when below; with fewer than "
            f"{MIN_VERDICT_SEEDS} seeds on either side there is no verdict. A guided model whose in-distribution "
            f"validation accuracy is within {COLLAPSE_SHARE * 100:g} % of the way from chance to 100 % has "
            "collapsed (it predicts about one class), and a gain that leaves the test accuracy as near chance "
            "is not called help: where the baseline is below chance, a constant guess would beat it.", "",
            "Per setting: the best guided run is the one with the highest mean test accuracy among the compared "
            "methods with enough seeds that did not collapse (a description of what was measured; nothing is "
            "selected with it; controls and degraded maps are left out). The setting's verdict is that of the "
            "paper's loss on oracle maps, the comparison fixed in advance; where it did not run, the best guided "
            "run's, marked as the best of the runs compared, since the best of many can help by chance. "
            f"The paper's loss: {' or '.join(tables.paper_loss) or 'not named'}.", "",
            _summary_table(tables.summary), "", "Every guided run:", "",
            _verdict_table(tables.verdict, *words(tables.rows)), ""]


def _sensitivity_section(sens: Sequence[dict[str, Any]]) -> list[str]:
    return ["## Map-quality sensitivity", "",
            "The guided method trained on oracle maps degraded in one controlled way at a time; strength 0 is the "
            "clean oracle. Map quality is measured on training images. Use it to judge a VLM: measure its maps the "
            "same way (`learning_to_look.maps.map_quality`) and read the expected accuracy off `sensitivity.png`.",
            "", _sensitivity_table(sens), ""]


def _figures_section(tables: Tables) -> list[str]:
    optional = [(tables.bites, "- `shortcut_search.png`: vanilla's seeds beside the clean bound's, per setting."),
                (tables.verdict, "- `verdict.png`: each guided run's difference from its baseline with its 95 % "
                                 "interval."),
                (tables.sensitivity, "- `sensitivity.png`: test accuracy against map IoU for each degradation.")]
    return ["## Figures", "",
            "- `qualitative.png`: the first test image of each of the first classes, the CAM of the selected "
            "baseline model and of the selected guided model (first seed), saved by each run after selection; "
            "shown only, nothing is chosen from it.",
            "- `maps_<data set>.png`: training images and the map of each map source used for guidance.",
            "- `curves.png`: validation accuracy and validation alignment KL per epoch, mean over seeds "
            "(band: ± std).",
            "- `accuracy.png`: test accuracy per method with ± std error bars; published numbers marked.",
            *[line for present, line in optional if present], ""]


def _environment_section(environment: dict[str, Any]) -> list[str]:
    return ["## Environment", "",
            f"device {environment.get('device', '?')}, torch {environment.get('torch', '?')}, "
            f"{environment.get('threads', '?')} threads, learning_to_look {environment.get('learning_to_look', '?')} "
            f"(git {str(environment.get('git_commit') or 'unknown')[:10]}), python {environment.get('python', '?')}. "
            "Full settings of every configuration: `results.json`.", ""]


def render_markdown(tables: Tables, header: dict[str, Any], environment: dict[str, Any], n_runs: int) -> str:
    rows, sens = tables.rows, tables.sensitivity
    obj, cue = words(rows)
    methods = sorted({f"{r.method} ({r.backbone})" for r in rows if r.compared})
    main = [r for r in rows if r.role != "sensitivity"]
    parts = [
        "# Learning to Look: reproduction report", "",
        f"{header['title']}.", "",
        "## What was run", "",
        f"- {n_runs} training runs: {len(rows)} configurations, seeds {_seeds(main)}"
        + (f" (sensitivity seeds: {_seeds([r for r in rows if r.role == 'sensitivity'])})." if sens else "."),
        f"- Methods: {', '.join(methods) or 'none'}; roles: " + ", ".join(sorted({r.role for r in rows})) + ".",
        f"- {_settings_text(rows, tables.shared)}",
        "- Model selection used the in-distribution validation split only (docs/protocol.md §3.6). The test "
        "split was read once per run, after selection, for the test metrics below; nothing was chosen with it. Map "
        f"quality (IoU of the map above the {obj} threshold, AUROC to the {obj}'s mask) is measured on training "
        "images.",
        f"- CAM on {obj} / {cue}: share of the positive class-activation (Grad-CAM where the network has no GAP "
        f"head) mass on the {obj} (dilated 3x3) / on the {cue}, on the test split, where the data set knows them.",
        *_data_text(main), "",
        "Map sources:", "", *_map_sources_text(rows), "",
        "## Results (measured here)", "",
        "Test accuracy in %, mean ± sample std over seeds; n = seeds. The published column is the number another "
        "paper reports for that method (source in the next table), not measured here.", "",
        _results_table(main), "",
        *(_published_section(tables.published) if tables.published else []),
        *(_bites_section(tables.bites) if tables.bites else []),
        *(_verdict_section(tables) if tables.verdict else []),
        *worst_group_section(worst_group_rows(rows)),
        *(_sweep_text(tables.sweep) if tables.sweep else []),
        *(_bound_text(tables.bound) if tables.bound else []),
        *(_sensitivity_section(sens) if sens else []),
        *_figures_section(tables), *_environment_section(environment)]
    return "\n".join(parts)


def csv_text(rows: Sequence[Row], published: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v)
                    for k, v in r.summary().items()})
    for p in published:
        w.writerow({"origin": "published", "dataset": p["dataset"], "method": p["method"],
                    "published_acc": p["published_acc"], "published_source": p["published_source"]})
    return buf.getvalue()


def _seeds_table(rows: Sequence[Row]) -> str:
    """Each configuration's test accuracy over seeds, every seed's value beside the mean:
    what a reader checks first when a spread looks large."""
    body = [[setting_label(dict(zip(SETTING_KEYS, r.setting))), r.method + (f" ({varying_label(r)})"
             if varying_label(r) else ""), r.maps.label, r.role, str(r.n_seeds),
             _acc(r.test_acc_mean, r.test_acc_std, r.n_seeds),
             ", ".join(f"{m.test.accuracy:.2f}" for m in r.members), _num(r.val_acc_mean),
             _selection_text(r)] for r in rows if r.role != "sensitivity"]
    return _table(["setting (data set, schedule, backbone)", "method", "maps (kind)", "role", "n", "test acc %",
                   "per seed", "validation acc %", "selected by"], body)


def _selection_text(r: Row) -> str:
    """Which rule chose the seeds' epochs; said plainly where the paper's rule inverted."""
    used = sorted({m.selection.get("rule_used", m.config.selection) for m in r.members})
    inverted = sum(m.selection_inverted for m in r.members)
    return ", ".join(used) + (f" (inverted in {inverted} of {r.n_seeds}: KL >= 1)" if inverted else "")


def _sweep_table(tables: Tables) -> str:
    """A sweep's answer in one row: the point validation chose, its test accuracy, how many
    runs reach the published number, and the test-peeking bound beside it, labelled."""
    sw, bound = tables.sweep, tables.bound
    if sw is None:
        return "(no sweep here: no selection.json)"
    members = [m for r in tables.rows for m in r.members]
    inverted = sum(m.selection_inverted for m in members)
    reach = ("—" if sw["published_acc"] is None
             else f"{sw['reach_published']} of {sw['n_runs']} ({sw['published_acc']:g})")
    body = [[f"{DATASET_NAMES.get(sw['dataset'], sw['dataset'])}, {sw['method']}",
             "; ".join(f"{k} {len(v)} values" for k, v in sw["axes"].items()), ", ".join(map(str, sw["seeds"])),
             point_label(sw["chosen"]), _acc(sw["test_acc_mean"], sw["test_acc_std"], len(sw["seeds"])), reach,
             f"{inverted} of {len(members)}",
             "—" if bound is None else f"{bound['bound_test_acc_mean']:.2f} at {point_label(bound['bound_point'])}"]]
    return _table(["sweep", "grid", "seeds", "chosen on validation", "its test acc %", "runs reaching the published %",
                   "runs selected where the paper's rule inverts", "optimistic bound, test-peeking (not a result)"],
                  body)


#: The tables ``l2l report --table KIND`` prints alone, e.g. for the docs (each rebuilt from records).
TABLES = {
    "seeds": lambda t: _seeds_table(t.rows),
    "results": lambda t: _results_table(t.rows),
    "verdict": lambda t: _verdict_table(t.verdict, *words(t.rows)),
    "summary": lambda t: _summary_table(t.summary),
    "bites": lambda t: _bite_table(t.bites),
    "published": lambda t: _published_table(t.published),
    "sensitivity": lambda t: _sensitivity_table(t.sensitivity),
    "sweep": _sweep_table,
    "worst-group": lambda t: "\n".join(worst_group_table(worst_group_rows(t.rows))),
}
