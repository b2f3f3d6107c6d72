// Validate Prometheus Operator resources (PodMonitor, ServiceMonitor, PrometheusRule) against the
// validators @kubernetes-models/prometheus-operator generates from the operator's CRD schemas.
//   node validate.mjs NODE_MODULES FILE.json...    (each file: one resource as JSON)
// Prints one line per file; exits 1 if any is invalid.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, ...files] = process.argv.slice(2);
let failed = 0;
for (const file of files) {
  const resource = JSON.parse(readFileSync(file, "utf8"));
  const [group, version] = resource.apiVersion.split("/");
  if (group !== "monitoring.coreos.com") throw new Error(`${file}: not a Prometheus Operator resource`);
  const path = join(modules, "@kubernetes-models/prometheus-operator", group, version, `${resource.kind}.js`);
  const Kind = (await import(pathToFileURL(path).href))[resource.kind];
  try {
    new Kind(resource).validate();
    console.log(`${file}: ${resource.kind} ${resource.apiVersion} valid`);
  } catch (err) {
    failed++;
    console.log(`${file}: ${resource.kind} invalid: ${err.message}`);
  }
}
process.exit(failed ? 1 : 0);
