// Validates PodMonitors (a JSON array on stdin) against the Prometheus Operator's
// CRD schema, as compiled by @kubernetes-models/prometheus-operator. Prints one
// line per object; exits 1 if any is invalid.
import fs from "node:fs";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";

let invalid = 0;
for (const doc of JSON.parse(fs.readFileSync(0, "utf8"))) {
  try {
    new PodMonitor(doc).validate();
    console.log(`ok ${doc.metadata.name}`);
  } catch (err) {
    invalid += 1;
    console.log(`invalid ${doc.metadata?.name}: ${err.message}`);
  }
}
process.exit(invalid ? 1 : 0);
