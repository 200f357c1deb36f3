"""Every line the `lepton` command prints for a person, as pure functions of plain
dicts and values: no settings, no services, no printing. The commands gather the
facts and echo what these return (users and scripts read these lines: change them
only on purpose; tests/platform/test_cli_render.py holds each one).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable

from lepton_core.resources import usage_text

NaN = float("nan")


def verdict(promoted: bool) -> str:
    return "promoted to @champion" if promoted else "registered, not promoted"


# ---------------------------------------------------------------- training
def retrain_summary(result: dict, status: dict, registry: str) -> list[str]:
    """After `lepton retrain` / `lepton demo`: the new version, the gate's reason, the
    champion, this run, where it is. (Then `browse`.)"""
    d = result["decision"]
    lines = [
        "",
        f"model version   {status['registered_model']} v{result['version']}: {verdict(d['promoted'])}",
        f"gate            {d['reason']}",
    ]
    for v in result.get("optimized", {}).get("variants", []):
        lines.append(f"variant         {v['reason']}")
    champ = status["champion"]
    if champ:
        lines.append(f"champion        v{champ['version']}  {_headline(champ['metrics'])}")
    this = {k.removeprefix("test_"): v for k, v in result["metrics"].items()}
    lines += [
        f"this run        {_headline(this)}",
        *([f"training cost   {usage_text(result['cost'])}"] if result.get("cost") else []),
        f"data version    {result['data_version']}",
        f"MLflow run      {result['run_id']}",
        f"registry        {registry}",
    ]
    return lines


def _headline(m: dict) -> str:
    """Test accuracy and macro-F1, or (regression) RMSE, MAE and R²."""
    if "rmse" in m:
        return f"test RMSE {m['rmse']:.4g}  MAE {m.get('mae', NaN):.4g}  R² {m.get('r2', NaN):.4f}"
    return f"test accuracy {m.get('accuracy', NaN):.4f}  macro-F1 {m.get('f1_macro', NaN):.4f}"


def browse(tracking_uri: str, run_link: str | None, local_link: str | None = None) -> list[str]:
    """Where to look at a run: `mlflow ui` over a local SQLite store (then `local_link`,
    the run's page on that UI), else the run's page on the tracking server."""
    if tracking_uri.startswith("sqlite:"):
        lines = [f"browse          mlflow ui --backend-store-uri {tracking_uri}"]
        if local_link:
            lines.append(f"                then {local_link}")
        return lines
    return [f"browse          {run_link or tracking_uri}"]


def _trial_values(values: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def sweep_summary(result: dict, model_name: str) -> list[str]:
    """After `lepton sweep`: one line per trial (* the best), then the best trial's
    version and the gate's reason. (Then `browse`.)"""
    best, d = result["best"], result["decision"]
    lines = [
        "",
        f"sweep           {len(result['trials'])} trials ({result['failed']} failed) on {result['runner']}; "
        f"parent MLflow run {result['parent_run_id']}",
    ]
    for t in result["trials"]:
        value = "failed" if t["value"] is None else f"{result['metric']} {t['value']:.4f}"
        mark = "*" if t["number"] == best["number"] else " "
        lines.append(f"  {mark} trial {t['number']:<3} {value:<24} {_trial_values(t['values'])}")
    lines += [
        f"model version   {model_name} v{result['version']} (trial {best['number']}): {verdict(d['promoted'])}",
        f"gate            {d['reason']}",
        f"best trial      {_best_figures(result['metrics'])}  run {best['run_id']}",
    ]
    if result.get("cost"):
        lines.append(f"sweep cost      {usage_text(result['cost'])}  ({result['cost']['trials']} trials)")
    return lines


def _best_figures(m: dict) -> str:
    """The best trial's test accuracy, or (regression) its test RMSE and R²."""
    if "test_rmse" in m:
        return f"test RMSE {m['test_rmse']:.4g}  R² {m.get('test_r2', NaN):.4f}"
    return f"test accuracy {m['test_accuracy']:.4f}"


# ---------------------------------------------------------------- status
def services_table(services: dict) -> list[str]:
    """One line per service of the stack: its name, health and address."""
    lines = []
    for svc, h in services.items():
        word = "healthy" if h["healthy"] else ("running, not healthy" if h["running"] else "down")
        word = h.get("problem") or word
        lines.append(f"{svc:<17} {word:<22} {h['url']}")
    return lines


def registry_table(st: dict, registry: str) -> list[str]:
    """The registered model, the registry, and the @champion and @previous versions."""
    lines = [f"registered model  {st['registered_model']}", f"registry          {registry}"]
    for alias in ("champion", "previous"):
        v = st[alias]
        if v is None:
            lines.append(f"@{alias:<9}        none")
            continue
        m = ", ".join(f"{k} {val:.4f}" for k, val in sorted(v["metrics"].items()))
        lines.append(f"@{alias:<9}        v{v['version']}  {m}  data {str(v['data_version'])[:12]}  run {v['run_id']}")
        if alias == "champion" and v.get("cost"):
            lines.append(f"  training cost   {usage_text(v['cost'])}")
    return lines


# ---------------------------------------------------------------- registry
def promote_line(r: dict) -> str:
    return f"v{r['version']} {'promoted' if r['promoted'] else 'not promoted'}: {r['reason']}"


def rollback_line(r: dict) -> str:
    return f"@champion is v{r['champion']} again (v{r['demoted']} demoted)"


# ---------------------------------------------------------------- platform
def up_summary(state: dict, urls: dict, stack_dir: str, backend: str) -> list[str]:
    """After `lepton up`: each service's address, the pool, encryption, auth and
    backend. `urls`: prefect, mlflow, s3, serve; `backend`: the database (redacted)
    or '' for SQLite files."""
    creds = f"{stack_dir}/credentials.json"
    auth = f"on (credentials in {creds})" if state.get("auth") else "off (--no-auth)"
    return [
        f"Prefect dashboard  {urls['prefect']}",
        f"MLflow UI          {urls['mlflow']}",
        f"S3 (SeaweedFS)     {urls['s3']}  bucket {state['bucket']}",
        f"model server       {urls['serve']}  (@champion; bearer token in {creds})",
        *_watch_lines(state),
        f"work pool          {state['pool']}",
        f"S3 encryption      {state.get('sse') or 'none requested'}",
        f"authentication     {auth}",
        *([f"SeaweedFS inside   mutual TLS (certificates in {stack_dir}/tls)"] if state.get("auth") else []),
        f"backend            {backend or 'SQLite under ' + stack_dir}",
        "every lepton command now uses this stack; `lepton deploy` registers the deployments",
    ]


_WATCH_TITLES = {
    "prometheus": ("Prometheus", "scrapes the model server, evaluates its alert rules", "prometheus"),
    "alertmanager": ("Alertmanager", "sends firing alerts to the alert webhook", "prometheus-alertmanager"),
    "evidently": ("Evidently UI", "the monitor's reports over time", "evidently"),
}


def _watch_lines(state: dict) -> list[str]:
    """The watching services `up` runs (lepton.watchers): address, or not installed."""
    w = state.get("watch") or {}
    lines = []
    for name, port in (w.get("ports") or {}).items():
        title, what, package = _WATCH_TITLES[name]
        if (w.get("pids") or {}).get(name):
            lines.append(f"{title:<19}http://127.0.0.1:{port}  ({what})")
        else:
            lines.append(f"{title:<19}not installed (apt-get install {package}); the stack works without it")
    return lines


def down_line(stopped: list[str]) -> str:
    return "stopped " + ", ".join(stopped) if stopped else "nothing was running"


def wrote_line(path) -> str:
    return f"wrote {path}"


def deploy_summary(
    deployed: dict,
    automation,
    recovery: list[str],
    crash_retries: int,
    *,
    deploy: dict,
    monitor_cron: str,
    pool: str,
    pool_type: str,
) -> list[str]:
    """After `lepton deploy`: each deployment's id, the schedules, the drift trigger,
    the crash-recovery automations and (kubernetes) what a retrain Job asks for.
    `deploy`: the params' deploy section as a dict."""
    lines = [f"deployed {flow_name}/lepton  ({dep_id})" for flow_name, dep_id in deployed.items()]
    lines += [
        f"retrain runs on cron '{deploy['retrain_cron']}', monitor on '{monitor_cron}' ({deploy['timezone']})",
        f"trigger lepton-retrain-on-drift ({automation}): lepton.drift.detected -> retrain/lepton",
    ]
    if recovery:
        lines.append(
            f"automations {' and '.join(recovery)}: a run whose process died is marked crashed and "
            f"run again (at most {crash_retries} times), resuming from its checkpoint"
        )
    if pool_type == "kubernetes":
        lines.append(
            f"work pool {pool} (kubernetes): retrain runs as a Job with {deploy['gpus']} GPU(s), "
            f"{deploy['memory']} memory, {deploy['cpu']} CPU(s)"
        )
    return lines


# ---------------------------------------------------------------- alerts
def alert_deploy_lines(where: str | None, fmt: str | None, names: list[str]) -> list[str]:
    """After `lepton deploy`: where notifications go and which automations send them
    (`where`: the webhook, redacted), or that none are sent."""
    if not where:
        return [
            "notifications: off (no alert webhook; `lepton up --alert-webhook URL` or LEPTON_ALERT_WEBHOOK, "
            "then `lepton deploy`)"
        ]
    kinds = ", ".join(n.removeprefix("lepton-notify-") for n in names)
    return [f"notifications to {where} ({'Slack' if fmt == 'slack' else 'generic'} JSON): {kinds}"]


def alert_test_line(where: str, fmt: str, status: str) -> str:
    """`lepton alerts test`: where the test notification went."""
    return f"sent a test notification to {where} ({'Slack' if fmt == 'slack' else 'generic'} JSON): {status}"


def alert_failures_line(f: dict) -> str:
    """`lepton status`: notifications that did not reach the webhook (lepton.alerts)."""
    latest = f["latest"]
    at = str(latest["at"])[:16].replace("T", " ")
    return (
        f"alerts: {f['failed']} of the last {f['failed'] + f['delivered']} notifications did not reach the webhook "
        f"(latest {at} UTC, {latest['automation']}: {latest['reason']}); `lepton alerts test` checks it"
    )


def env_exports(env: dict) -> list[str]:
    """`export NAME=value` lines for a POSIX shell (`eval "$(lepton env)"`), each value
    quoted so that nothing in it runs."""
    return [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]


def env_notes(stack: bool, down: Iterable[str] = (), differing: Iterable[str] = ()) -> list[str]:
    """What `lepton env` says on stderr. With a stack: which of its services are down,
    which variables this shell sets otherwise. Without: that no stack is up, and which
    variables this shell sets itself (they win over the local defaults, and may be
    left from an earlier `eval`)."""
    differing = list(differing)
    if not stack:
        lines = ["no stack is up (`lepton up` starts one): these are the local defaults"]
        if differing:
            lines.append(
                f"set in this shell, so used over the local defaults: {', '.join(differing)} (`unset` for the defaults)"
            )
        return lines
    lines = [f"the stack's {name} is down: `lepton up` starts it again" for name in down]
    if differing:
        lines.append(f"this shell sets {', '.join(differing)} otherwise; eval the exports to use the stack's")
    return lines


# ---------------------------------------------------------------- monitoring
def drift_batch_line(r: dict) -> str:
    return f"wrote {r['samples']} images ({r['kind']}, strength {r['strength']}) to {r['path']}"


def monitor_results(r: dict) -> list[str]:
    """After `lepton monitor`: each batch's verdict, report and run, and the event."""
    lines = [] if r["results"] else ["no new batches"]
    for res in r["results"]:
        lines.append(f"{res['batch_id']}: {res['verdict']}")
        if res["report_html"]:
            lines.append(f"  report  {res['report_html']}")
        if res.get("report_url"):
            lines.append(f"  in MLflow  {res['report_url']}")
        lines.append(f"  MLflow monitoring run  {res['mlflow_run_id']}")
        if res.get("accepted_for_training"):
            lines.append(f"  accepted for the next retrain (`lepton monitor reject {res['batch_id']}` to refuse it)")
    if r["event_emitted"]:
        lines.append("drift event emitted")
    elif r.get("event_suppressed"):
        lines.append(f"drift event {r['event_suppressed']}")
    else:
        lines.append("no drift event")
    return lines


def accepted_table(batches: list[dict]) -> list[str]:
    """The accepted batches: id, when (UTC), rows, path."""
    if not batches:
        return ["no accepted batches"]
    lines = [f"{'batch':<28} {'accepted (UTC)':<17} {'rows':>6}  path"]
    for b in batches:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(b["accepted_at"])) if b.get("accepted_at") else "-"
        rows = "-" if b.get("rows") is None else str(b["rows"])
        lines.append(f"{b['id']:<28} {when:<17} {rows:>6}  {b['path']}")
    return lines


def rejected_line(b: dict) -> str:
    return f"rejected {b['id']}: the next retrain will not fold it in ({b['path']})"


# ---------------------------------------------------------------- serving and data
def serving_line(model_name: str, alias: str, host: str, port: int, auth: bool, log_folder) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 address, as URLs write it
    return (
        f"serving {model_name}@{alias} on http://{shown}:{port}  (POST /v1/predict; "
        f"auth {'on' if auth else 'off'}; prediction log {log_folder})"
    )


def predict_line(r: dict) -> str:
    acc = f", accuracy {r['accuracy']:.4f} against the labels in the data" if "accuracy" in r else ""
    if "rmse" in r:  # a regression model, on a table with the true targets
        acc = f", RMSE {r['rmse']:.4g} and MAE {r['mae']:.4g} against the targets in the data"
    return (
        f"scored {r['rows']} samples with {r['model']} v{r['version']} ({r['quarantined']} quarantined)"
        f"{acc} -> {r['out']}"
    )


def restored_line(version: str, path, files: int) -> str:
    return f"restored data version {version} to {path} ({files} files)"


# ---------------------------------------------------------------- reproduce
def reproduce_lines(rep) -> list[str]:
    """`lepton reproduce`: the logged and the reproduced test metrics side by side, and
    whether they match. `rep`: a lepton.reproduce.Reproduction."""
    lin = rep.lineage
    lines = [
        f"{lin.name} v{lin.version}: data {lin.data_version}, run {lin.run_id}, commit {lin.commit[:12]}",
        f"{'metric':<22} {'logged':>12} {'reproduced':>12} {'difference':>12}",
    ]
    for k, logged in sorted(lin.metrics.items()):
        if k in rep.metrics:
            lines.append(f"{k:<22} {logged:>12.6g} {rep.metrics[k]:>12.6g} {rep.metrics[k] - logged:>12.3g}")
    if rep.exact:
        lines.append(f"the metrics match exactly (reproduction run {rep.run_id})")
    else:
        worst = max(rep.diffs, key=lambda k: abs(rep.diffs[k]), default=None)
        where = f"; largest difference {worst} {rep.diffs[worst]:+.3g}" if worst else ""
        lines.append(f"the metrics differ{where} (reproduction run {rep.run_id})")
    return lines


# ---------------------------------------------------------------- versions and compare
def _metrics_cell(m: dict) -> str:
    """A version's test metrics in a few words: accuracy and macro-F1, or RMSE and R²."""
    if "rmse" in m:
        return f"RMSE {m['rmse']:.4g}" + (f"  R² {m['r2']:.4f}" if "r2" in m else "")
    if "accuracy" in m:
        return f"accuracy {m['accuracy']:.4f}" + (f"  F1 {m['f1_macro']:.4f}" if "f1_macro" in m else "")
    return "-"


def _gate_cell(v: dict) -> str:
    """What the gate decided on a version (a variant is not judged: what it is a variant of)."""
    if v.get("variant"):
        return f"{v['variant']} variant of v{v['variant_of']}"
    g = v.get("gate")
    if not g:
        return "not judged"
    against = f" against v{g['champion_version']}" if g.get("champion_version") else ""
    p = f", p {g['p_value']:.4g}" if g.get("p_value") is not None else ""
    return f"{g['decision']}{against}{p}: {g['reason']}"


def versions_table(r: dict) -> list[str]:
    """`lepton versions`: one line per version, newest first."""
    vs = r["versions"]
    lines = [f"registered model  {r['registered_model']}  ({len(vs)} version{'' if len(vs) == 1 else 's'})"]
    if not vs:
        return lines
    aliases = [", ".join(v["aliases"]) or "-" for v in vs]
    width = max(7, *(len(a) for a in aliases))
    lines.append(
        f"{'version':<8} {'aliases':<{width}}  {'created (UTC)':<16}  {'test metrics':<26}  "
        f"{'data':<12}  {'commit':<8}  gate"
    )
    for v, a in zip(vs, aliases, strict=True):
        created = v["created_at"][:16].replace("T", " ")
        lines.append(
            f"v{v['version']:<7} {a:<{width}}  {created:<16}  {_metrics_cell(v['metrics']):<26}  "
            f"{(v['data_version'] or '-')[:12]:<12}  {(v['git_commit'] or '-')[:8]:<8}  {_gate_cell(v)}"
        )
    return lines


def _who(side: dict) -> str:
    aliases = f" @{', @'.join(side['aliases'])}" if side["aliases"] else ""
    variant = f" ({side['variant']} variant of v{side['variant_of']})" if side.get("variant") else ""
    return f"v{side['version']}{aliases}{variant}"


def _metric_rows(r: dict) -> list[str]:
    a, b = r["a"]["metrics"], r["b"]["metrics"]
    lines = [f"{'metric':<16} {'A v' + r['a']['version']:>10} {'B v' + r['b']['version']:>10} {'B - A':>10}"]
    for k in a:
        lines.append(f"{k:<16} {a[k]:>10.4f} {b[k]:>10.4f} {b[k] - a[k]:>+10.4f}")
    return lines


def paired_test_text(r: dict) -> str:
    """The gate's paired test on the two versions, with its discordant counts."""
    t = r["paired_test"]
    if "only_a_right" in t:
        return (
            f"McNemar exact (two-sided): {t['only_a_right']} samples only A labels right, "
            f"{t['only_b_right']} only B; p = {t['p_value']:.4g}"
        )
    return (
        f"paired t-test on squared errors: A closer on {t['a_closer']} rows, B on "
        f"{t['b_closer']}; mean difference (B - A) {t['mean_sq_err_diff']:.4g}, t {t['t_statistic']:.3g}, "
        f"p (B worse) = {t['p_value']:.4g}"
    )


def gate_text(r: dict) -> str:
    """What the gate recorded when it judged B against A on this split, if it did."""
    g = r.get("gate")
    if not g:
        return f"did not judge v{r['b']['version']} against v{r['a']['version']} on this split"
    p = "no p-value" if g["p_value"] is None else f"p = {g['p_value']:.4g}"
    return f"judged v{g['version']} against v{g['champion_version']} on this split: {g['decision']}, {p}"


def _per_class_rows(per_class: dict) -> list[str]:
    lines = [f"{'class':<16} {'F1 A':>7} {'F1 B':>7} {'B - A':>7}  {'recall A':>8} {'recall B':>8} {'support':>8}"]
    for name, d in per_class.items():
        a, b = d["a"], d["b"]
        lines.append(
            f"{name[:16]:<16} {a['f1']:>7.3f} {b['f1']:>7.3f} {d['f1_diff']:>+7.3f}  "
            f"{a['recall']:>8.3f} {b['recall']:>8.3f} {a['support']:>8}"
        )
    return lines


MAX_MATRIX_CLASSES = 20  # wider matrices are in --json and --html only


def confusion_rows(cm: list[list[int]], classes: list[str], title: str) -> list[str]:
    """A confusion matrix as text: rows true classes, columns predictions."""
    w = max(4, *(len(str(v)) + 1 for row in cm for v in row), *(len(c[:6]) + 1 for c in classes))
    lines = [f"{title} (rows: true class, columns: predicted)", " " * 8 + "".join(f"{c[:6]:>{w}}" for c in classes)]
    for name, row in zip(classes, cm, strict=True):
        lines.append(f"{name[:8]:<8}" + "".join(f"{v:>{w}}" for v in row))
    return lines


def _samples_line(label: str, rows: list[dict], count: int, shown: int, regression: bool) -> str:
    def one(s: dict) -> str:
        if regression:
            return f"#{s['index']} true {s['true']:.4g} (A {s['a']:.4g}, B {s['b']:.4g})"
        return f"#{s['index']} true {s['true']} (A {s['a']}, B {s['b']})"

    more = f", ... ({count - shown} more)" if count > shown else ""
    listed = ", ".join(one(s) for s in rows[:shown])
    return f"{label:<16} {count} sample{'' if count == 1 else 's'}" + (f": {listed}{more}" if count else "")


def compare_summary(r: dict, shown: int = 6) -> list[str]:
    """`lepton compare A B`: metrics side by side, the paired test, per-class
    differences, both confusion matrices and the samples they disagree on."""
    n, dv = r["n"], r["test_data_version"]
    lines = [
        f"A  {r['registered_model']} {_who(r['a'])}",
        f"B  {r['registered_model']} {_who(r['b'])}",
        f"both scored on the test split of data version {dv[:12]} ({r['test_data_of']}'s), {n} samples",
        "",
        *_metric_rows(r),
        "",
        f"{'paired test':<16} {paired_test_text(r)}",
        f"{'the gate':<16} {gate_text(r)}",
    ]
    t = r["paired_test"]
    if r["task"] == "regression":
        return lines + [
            _samples_line("A much closer", r["a_closer"], t["a_closer"], shown, True),
            _samples_line("B much closer", r["b_closer"], t["b_closer"], shown, True),
        ]
    lines += [
        _samples_line("only A right", r["only_a_right"], t["only_a_right"], shown, False),
        _samples_line("only B right", r["only_b_right"], t["only_b_right"], shown, False),
        "",
        *_per_class_rows(r["per_class"]),
    ]
    classes = r["classes"]
    if len(classes) > MAX_MATRIX_CLASSES:
        return lines + ["", f"confusion matrices: {len(classes)} classes, see --json or --html"]
    for side in ("a", "b"):
        title = f"confusion matrix of {side.upper()} v{r[side]['version']}"
        lines += ["", *confusion_rows(r[side]["confusion_matrix"], classes, title)]
    return lines


def _figure(value: float | None, regression: bool) -> str:
    if value is None:
        return "-"
    return f"RMSE {value:.4g}" if regression else f"accuracy {value:.4f}"


def live_compare_summary(r: dict) -> list[str]:
    """`lepton compare --live A B`: the requests both scored, their agreement, both
    versions on the labelled ones with the paired test, and each on its own requests."""
    regression = r["task"] == "regression"
    key = "rmse" if regression else "accuracy"
    p = r["paired"]
    window = f"the last {r['since_hours']:g} hours of " if r["since_hours"] is not None else ""
    lines = [
        f"A  {r['registered_model']} {_who(r['a'])}",
        f"B  {r['registered_model']} {_who(r['b'])}",
        f"live traffic: {window}the prediction log {r['log']}",
        "",
    ]
    if p["instances"]:
        agree = f"mean |B - A| {p['mean_abs_diff']:.4g}" if regression else f"agreement {p['agreement']:.4f}"
        lines.append(f"{'both scored':<16} {p['instances']} instances; {agree}; {p['labelled']} with a label")
    else:
        lines.append(f"{'both scored':<16} no request (a canary answers other requests; serve.shadow pairs them)")
    if p["paired_test"] is not None:
        lines += [
            f"{'on those':<16} A {_figure(p['a'][key], regression)}   B {_figure(p['b'][key], regression)}",
            f"{'paired test':<16} {paired_test_text({'paired_test': p['paired_test']})}",
        ]
    for side in ("a", "b"):
        own = r[side]
        lines.append(
            f"{side.upper() + ' on its own':<16} {own['instances']} instances, {own['labelled']} with a label: "
            f"{_figure(own[key], regression)}"
        )
    return lines


# ---------------------------------------------------------------- explanations
def explain_lines(r: dict) -> list[str]:
    """After `lepton explain`: what was explained, the features that weigh most (tables),
    and what was written where."""
    shown = f"the first {r['n']} of {r['total']} samples (--limit)" if r["n"] < r["total"] else f"{r['n']} samples"
    lines = [f"explained       {shown} with {r['model']} v{r['version']} (Integrated Gradients, {r['steps']} steps)"]
    if r["kind"] == "tabular":
        top = ", ".join(f"{name} {value:.3g}" for name, value in r["top"][:5])
        lines += [f"top features    {top}  (mean |attribution|)", f"wrote           {r['out']}/attributions.parquet"]
    else:
        lines.append(f"wrote           {r['out']}/  ({r['n']} maps as PNG, all in attributions.npy)")
    return lines


# ---------------------------------------------------------------- model report
def report_lines(st: dict) -> list[str]:
    """Under `registry_table` (`lepton status`): where the model report of @champion
    and @previous opens, for the versions whose run wrote one."""
    return [
        f"{'@' + alias + ' report':<18}{st[alias]['report_url']}"
        for alias in ("champion", "previous")
        if st.get(alias) and st[alias].get("report_url")
    ]
