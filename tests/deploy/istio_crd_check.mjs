// One-off check of deploy/istio against the Istio CRD schemas packaged by the npm package
// @kubernetes-models/istio (generated from Istio 1.29's CRDs; it checks types, enums and
// required fields, not unknown fields, which tests/deploy/test_istio.py does). Not part of
// `make test` (it needs npm); run it by hand:
//
//   d=$(mktemp -d) && (cd "$d" && npm init -y >/dev/null &&
//       npm install --silent @kubernetes-models/istio@3.0.1 js-yaml@4) &&
//   cp tests/deploy/istio_crd_check.mjs "$d"/ && node "$d"/istio_crd_check.mjs \
//       deploy/istio/security.yaml deploy/istio/oauth.yaml \
//       deploy/istio/optional/ext-proc-envoyfilter.yaml deploy/istio/install/istio-operator.yaml
import fs from "node:fs";
import yaml from "js-yaml";
import { AuthorizationPolicy, PeerAuthentication } from "@kubernetes-models/istio/security.istio.io/v1";
import { EnvoyFilter } from "@kubernetes-models/istio/networking.istio.io/v1alpha3";
import { VirtualService } from "@kubernetes-models/istio/networking.istio.io/v1";
import { IstioOperator } from "@kubernetes-models/istio/install.istio.io/v1alpha1";
const kinds = { AuthorizationPolicy, PeerAuthentication, EnvoyFilter, IstioOperator, VirtualService };
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (!doc) continue;
    const Model = kinds[doc.kind];
    if (!Model) { console.log(`skip ${file} ${doc.kind}`); continue; }
    try { new Model(doc).validate(); console.log(`ok   ${file} ${doc.kind}/${doc.metadata.name}`); }
    catch (e) { failed++; console.log(`FAIL ${file} ${doc.kind}/${doc.metadata.name}: ${e.message}`); }
  }
}
// negative control: a wrong enum and a wrong type must fail
for (const bad of [
  { apiVersion: "security.istio.io/v1", kind: "AuthorizationPolicy", metadata: { name: "bad" }, spec: { action: "CUSTOMX" } },
  { apiVersion: "networking.istio.io/v1alpha3", kind: "EnvoyFilter", metadata: { name: "bad" }, spec: { configPatches: [{ applyTo: "HTTP_FILTERS" }] } },
  { apiVersion: "networking.istio.io/v1", kind: "VirtualService", metadata: { name: "bad" }, spec: { http: [{ route: [{ destination: { host: "x", port: { number: "9002" } } }] }] } },
]) {
  try { new kinds[bad.kind](bad).validate(); console.log("negative control passed unexpectedly"); failed++; }
  catch (e) { console.log(`ok   negative control rejected: ${e.message.split("\n")[0]}`); }
}
process.exit(failed ? 1 : 0);
