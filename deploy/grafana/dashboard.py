"""Generate the advguard Grafana dashboard (deploy/grafana/advguard.json) from Python.

    python deploy/grafana/dashboard.py           # rewrite advguard.json
    python deploy/grafana/dashboard.py --check   # exit 1 if advguard.json is not what this writes

Built with grafana-foundation-sdk, Grafana Labs' own SDK (typed builders generated from Grafana's
dashboard and panel schemas, released per Grafana version: this pin, 11.6, matches the Grafana in
deploy/compose.yaml). grafanalib, the older community library, is maintained slowly and follows
Grafana's schema by hand. tests/deploy/test_grafana.py checks the committed JSON is this script's
output, and runs every panel query through a real Prometheus scraping a real server.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

OUT = Path(__file__).resolve().parent / "advguard.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")  # provisioning/datasources
CLASSIFY = 'method=~"Classify|ClassifyBatch|ClassifyStream|ModelInfer"'
MODEL = 'model=~"$model"'


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DATASOURCE)


def series(title: str, description: str, unit: str, *queries: prometheus.Dataquery,
           stacked: bool = False, width: int = 12) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
             .height(8).span(width).fill_opacity(10 if not stacked else 60))
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.PERCENT))
    for q in queries:
        panel = panel.with_target(q)
    return panel


def build() -> dashboard.Dashboard:
    model = (dashboard.QueryVariable("model").label("model").datasource(DATASOURCE)
             .query("label_values(advguard_model_info, model)").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
             .sort(VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True).all_value(".*"))
    quantiles = [query(f"histogram_quantile({q}, sum by (le) (rate(advguard_request_latency_seconds_bucket"
                       f"{{{MODEL}, {CLASSIFY}}}[$__rate_interval])))", f"p{round(q * 100)}", ref)
                 for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))]
    return (
        dashboard.Dashboard("advguard").uid("advguard").tags(["advguard", "grpc"]).refresh("30s")
        .time("now-1h", "now").timezone("browser").with_variable(model)
        .with_panel(series("Request rate by method and code", "Calls per second by gRPC method and status code "
                           "(advguard_requests_total).", "reqps",
                           query("sum by (method, code) (rate(advguard_requests_total[$__rate_interval]))",
                                 "{{method}} {{code}}")))
        .with_panel(series("Classification latency", "p50, p95 and p99 from arrival to answer of Classify, "
                           "ClassifyBatch, ClassifyStream and ModelInfer (advguard_request_latency_seconds).",
                           "s", *quantiles))
        .with_panel(series("Verdict mix", "Share of classified images by verdict (advguard_verdicts_total).",
                           "percentunit",
                           query(f"sum by (verdict) (rate(advguard_verdicts_total{{{MODEL}}}[$__rate_interval]))",
                                 "{{verdict}}"), stacked=True))
        .with_panel(series("Flags per detector", "Images each detector flagged per second "
                           "(advguard_attacks_flagged_total).", "short",
                           query(f"sum by (model, detector) (rate(advguard_attacks_flagged_total{{{MODEL}}}"
                                 f"[$__rate_interval]))", "{{model}} {{detector}}")))
        .with_panel(series("Queue depth and calls in flight", "Images waiting for a batch, by model "
                           "(advguard_queue_depth), and calls being handled (advguard_requests_in_flight: "
                           "the autoscaling signal).", "short",
                           query(f"sum by (model) (advguard_queue_depth{{{MODEL}}})", "queued {{model}}", "A"),
                           query("sum(advguard_requests_in_flight)", "in flight", "B")))
        .with_panel(series("Batch size", "Images per model run: mean and p99 (advguard_batch_size).", "short",
                           query(f"sum by (model) (rate(advguard_batch_size_sum{{{MODEL}}}[$__rate_interval])) / "
                                 f"sum by (model) (rate(advguard_batch_size_count{{{MODEL}}}[$__rate_interval]))",
                                 "mean {{model}}", "A"),
                           query(f"histogram_quantile(0.99, sum by (le, model) (rate(advguard_batch_size_bucket"
                                 f"{{{MODEL}}}[$__rate_interval])))", "p99 {{model}}", "B")))
        .with_panel(table.Panel().title("Models loaded").description(
            "Loaded model files by bundle, version and SHA-256 (advguard_model_info).")
            .datasource(DATASOURCE).height(8).span(16)
            .with_target(query(f"max by (model, version, file, sha256) (advguard_model_info{{{MODEL}}})")
                         .format("table").instant()))
        .with_panel(stat.Panel().title("Bundle loads and refusals").description(
            "Versions loaded or refused (failed verification) over the time range "
            "(advguard_model_loads_total).").datasource(DATASOURCE).height(8).span(8)
            .with_target(query(f"sum by (model, outcome) (increase(advguard_model_loads_total{{{MODEL}}}[$__range]))",
                               "{{model}} {{outcome}}").instant()))
    )


def render() -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python deploy/grafana/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
