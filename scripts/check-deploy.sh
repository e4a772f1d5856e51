#!/usr/bin/env bash
# Offline checks of deploy/ (make deploy-check, part of make test):
#  1. the example alerting rules pass `promtool check rules`, and the cases
#     of alerts_test.yml pass `promtool test rules`;
#  2. the kustomize base renders (`kubectl kustomize`);
#  3. every rendered object passes schema validation (kubernetes-validate,
#     strict: an unknown field fails) for the oldest and newest Kubernetes
#     versions named below;
#  4. scripts/check-kubernetes.py checks the settings tally depends on.
# No cluster is contacted. scripts/install-deploy-deps.sh installs the tools.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/target/tools/bin:$PATH"
venv=target/tools/deploy-venv
versions=(1.29.0 1.37.0)

echo "== promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)

rendered=target/kubernetes/rendered.yaml
mkdir -p "$(dirname "$rendered")"
echo "== kubectl kustomize deploy/kubernetes > $rendered"
# kustomize 5 warns that commonLabels is deprecated; the replacement is not
# understood by the kustomize 2 in Debian's kubectl, so the base keeps it.
kubectl kustomize deploy/kubernetes 2> >(grep -v "'commonLabels' is deprecated" >&2) >"$rendered"

for version in "${versions[@]}"; do
    echo "== kubernetes-validate --strict -k $version"
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$rendered"
done

echo "== scripts/check-kubernetes.py"
"$venv/bin/python" scripts/check-kubernetes.py "$rendered"
