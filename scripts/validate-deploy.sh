#!/usr/bin/env bash
# Validates the manifests in deploy/ against the Kubernetes 1.33 OpenAPI schemas with
# kubernetes-validate (pinned), in strict mode (unknown fields are errors).
# The venv lives under target/ and is created on first use (needs PyPI once); later
# runs are offline.
#
# Kinds without a bundled schema are only allowed for the Kustomizations (deploy/ and
# deploy/crds/) and the
# optional Prometheus Operator ServiceMonitor (a CRD): their warnings are expected.
# Any other warning or failure fails the script. The kustomization must list every
# manifest at the top of deploy/ and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
KV_VERSION=1.33.1       # kubernetes-validate release
K8S_VERSION=1.33.0      # the Kubernetes API the manifests target (k8s-openapi feature v1_33)
VENV=${CARGO_TARGET_DIR:-target}/kubernetes-validate-$KV_VERSION
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

fail=0
mapfile -t files < <(find deploy -name '*.yaml' | sort)
out=$("$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "${files[@]}" 2>&1) || fail=1
echo "$out"
while IFS= read -r line; do
  case "$line" in
    INFO*) ;;
    "WARN deploy/kustomization.yaml Couldn't find schema for kind Kustomization "*) ;;
    "WARN deploy/crds/kustomization.yaml Couldn't find schema for kind Kustomization "*) ;;
    "WARN deploy/optional/servicemonitor.yaml Couldn't find schema for kind ServiceMonitor "*) ;;
    "") ;;
    *) echo "validate-deploy: unexpected: $line" >&2; fail=1 ;;
  esac
done <<<"$out"

# The kustomization's resources are exactly the top-level manifests.
listed=$(sed -n '/^resources:/,/^[^ ]/p' deploy/kustomization.yaml | sed -n 's/^  - \(.*\.yaml\)$/\1/p' | sort)
present=$(cd deploy && ls *.yaml | grep -v '^kustomization.yaml$' | sort)
if [ "$listed" != "$present" ]; then
  echo "validate-deploy: deploy/kustomization.yaml resources differ from deploy/*.yaml:" >&2
  diff <(echo "$listed") <(echo "$present") >&2 || true
  fail=1
fi

if ((fail)); then
  echo "validate-deploy: FAILED" >&2
  exit 1
fi
echo "validate-deploy: ${#files[@]} files valid against Kubernetes $K8S_VERSION (kubernetes-validate $KV_VERSION, strict)"
