"""Checks the rendered Kubernetes objects (deploy/kubernetes, rendered by
scripts/check-deploy.sh) for the settings tally relies on: what schema
validation cannot see. Usage: check-kubernetes.py RENDERED.yaml

Each check names the object and the setting, so a failure says what an
edit broke."""

import sys

import yaml

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def probe_path(container, probe):
    return container.get(probe, {}).get("httpGet", {}).get("path")


def check_server(sts, port, min_replicas, max_replicas):
    name = sts["metadata"]["name"]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)

    check(min_replicas <= spec["replicas"] <= max_replicas,
          f"{name}: replicas {spec['replicas']} not in [{min_replicas}, {max_replicas}]")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        check(probe_path(container, probe) == "/health", f"{name}: {probe} is not GET /health")
    check(env.get("TALLY_LISTEN", {}).get("value") == f"0.0.0.0:{port}",
          f"{name}: TALLY_LISTEN is not 0.0.0.0:{port}")
    check([p["containerPort"] for p in container["ports"]] == [port],
          f"{name}: container port is not {port}")

    # The data directory is a volume from the claim template, so a pod
    # rescheduled elsewhere gets its data back.
    check(env.get("TALLY_DATA_DIR", {}).get("value") == "/data", f"{name}: TALLY_DATA_DIR is not /data")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    templates = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    check(mounts.get("/data") in templates, f"{name}: /data is not a volumeClaimTemplate")

    # The token comes from the Secret, never from a literal in the manifest.
    token = env.get("TALLY_CLUSTER_TOKEN", {})
    ref = token.get("valueFrom", {}).get("secretKeyRef", {})
    check("value" not in token and ref.get("name") == "tally-cluster-token" and ref.get("key") == "token",
          f"{name}: TALLY_CLUSTER_TOKEN is not read from secret tally-cluster-token, key token")

    # Graceful stop: the server's own grace ends before Kubernetes' SIGKILL.
    grace = env.get("TALLY_SHUTDOWN_GRACE", {}).get("value", "10s")
    check(grace.endswith("s") and grace[:-1].isdigit(), f"{name}: TALLY_SHUTDOWN_GRACE {grace!r} is not whole seconds")
    if grace[:-1].isdigit():
        check(int(grace[:-1]) < pod.get("terminationGracePeriodSeconds", 30),
              f"{name}: TALLY_SHUTDOWN_GRACE {grace} is not below terminationGracePeriodSeconds")

    annotations = spec["template"]["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/scrape") == "true", f"{name}: no prometheus.io/scrape annotation")
    check(annotations.get("prometheus.io/port") == str(port), f"{name}: prometheus.io/port is not {port}")

    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            check(resource in resources.get(kind, {}), f"{name}: no {resource} {kind}")
    return pod, env


def main(path):
    with open(path) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}

    def get(kind, name):
        obj = by_kind.get((kind, name))
        check(obj is not None, f"no {kind} {name}")
        return obj or {}

    coordinator = get("StatefulSet", "tally-coordinator")
    counter = get("StatefulSet", "tally-counter")
    if not (coordinator and counter):
        return

    # One coordinator: two would decide transactions independently.
    check_server(coordinator, 8080, 1, 1)
    pod, env = check_server(counter, 8081, 2, 100)

    # Counters: stable names are their ids and advertised URLs, through the
    # headless Service the StatefulSet governs.
    headless = get("Service", counter["spec"]["serviceName"])
    check(headless.get("spec", {}).get("clusterIP") == "None", "tally-counter Service is not headless")
    check(headless.get("spec", {}).get("publishNotReadyAddresses") is True,
          "tally-counter Service hides pods that are not ready (a joining counter must be reachable)")
    check(env.get("TALLY_ID", {}).get("value") == "$(POD_NAME)", "tally-counter: TALLY_ID is not the pod name")
    check(env.get("TALLY_ADVERTISE", {}).get("value") == f"http://$(POD_NAME).{headless['metadata']['name']}:8081",
          "tally-counter: TALLY_ADVERTISE is not the pod's stable DNS name")
    check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          "tally-counter: POD_NAME is not the pod's name")

    # Counters reach the coordinator by its pod's name through a headless
    # Service that lists it before it is ready.
    coordinator_pods = get("Service", coordinator["spec"]["serviceName"])
    check(coordinator_pods.get("spec", {}).get("publishNotReadyAddresses") is True,
          "the coordinator's pod Service hides it until ready")
    check(env.get("TALLY_COORDINATOR", {}).get("value")
          == f"http://{coordinator['metadata']['name']}-0.{coordinator_pods['metadata']['name']}:8080",
          "tally-counter: TALLY_COORDINATOR is not the coordinator pod's stable DNS name")
    client = get("Service", "tally-coordinator")
    check(client.get("spec", {}).get("clusterIP") != "None", "tally-coordinator Service is headless")
    check([p["port"] for p in client.get("spec", {}).get("ports", [])] == [8080],
          "tally-coordinator Service does not serve port 8080")

    # Counters on distinct nodes, and at most one down by choice.
    terms = pod.get("affinity", {}).get("podAntiAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", [])
    check(any(t.get("topologyKey") == "kubernetes.io/hostname"
              and t.get("labelSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "tally-counter"
              for t in terms), "tally-counter: no anti-affinity across nodes")
    pdb = get("PodDisruptionBudget", "tally-counter")
    check(pdb.get("spec", {}).get("maxUnavailable") == 1, "tally-counter PodDisruptionBudget does not allow exactly one down")
    check(pdb.get("spec", {}).get("selector") == counter["spec"]["selector"],
          "tally-counter PodDisruptionBudget does not select the counters")

    # Every Service selects pods of a StatefulSet.
    pod_labels = [o["spec"]["template"]["metadata"]["labels"] for o in (coordinator, counter)]
    for (kind, name), obj in by_kind.items():
        if kind == "Service":
            selector = obj["spec"].get("selector", {})
            check(any(all(labels.get(k) == v for k, v in selector.items()) for labels in pod_labels),
                  f"Service {name} selects no pod")


if __name__ == "__main__":
    main(sys.argv[1])
    if failures:
        for failure in failures:
            print(f"FAIL {failure}", file=sys.stderr)
        sys.exit(1)
    print("kubernetes objects: every checked setting holds")
