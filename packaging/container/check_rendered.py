#!/usr/bin/env python3
"""Checks of the chart's rendered resources that a schema cannot make (packaging/container/ci.sh).

    check_rendered.py contract RENDERED ACCOUNTS...   what SPEC 7 and issue 19 require of every
                                                      account's resources; exit 1 with every problem
    check_rendered.py monitoring RENDERED ALERTS DASHBOARD
                                                      the optional resources: the ServiceMonitor
                                                      selects every account's Service and port, the
                                                      PrometheusRule is the shipped alerts.yml, the
                                                      dashboard ConfigMap is the shipped json
    check_rendered.py extract RENDERED ACCOUNT OUT    one account's Deployment, ConfigMap, Secret
                                                      and PVC (what podman kube play runs) into OUT,
                                                      without containerPorts (see extract())
    check_rendered.py annotation RENDERED ACCOUNT     prints the account's checksum/config

Needs PyYAML (the venv of ci.sh has it: kubernetes-validate depends on it).
"""
import json
import sys

import yaml

ACCOUNT_LABEL = "chatapp-kommo-sync/account"
STATE_DIR = "/var/lib/chatapp-kommo-sync"


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def of_account(docs, account):
    return [d for d in docs if d["metadata"].get("labels", {}).get(ACCOUNT_LABEL) == account]


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    return found[0] if len(found) == 1 else None


def contract(rendered, accounts):
    docs = load(rendered)
    problems = []

    def need(cond, what):
        if not cond:
            problems.append(what)

    for account in accounts:
        mine = of_account(docs, account)
        kinds = sorted(d["kind"] for d in mine)
        dep = one(mine, "Deployment")
        svc = one(mine, "Service")
        cm = one(mine, "ConfigMap")
        pvc = one(mine, "PersistentVolumeClaim")
        p = f"{account}: "
        need(dep and svc and cm and pvc, p + f"one Deployment, Service, ConfigMap and PVC each (found {kinds})")
        if not (dep and svc and cm and pvc):
            continue
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        need(spec.get("replicas") == 1, p + "replicas must be 1 (one writer per state db)")
        need(spec.get("strategy", {}).get("type") == "Recreate", p + "strategy must be Recreate")
        need(len(pod["containers"]) == 1, p + "one container")
        c = pod["containers"][0]
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        need(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, p + "the pod must run as a non-root uid")
        need(csc.get("readOnlyRootFilesystem") is True, p + "readOnlyRootFilesystem")
        need(csc.get("allowPrivilegeEscalation") is False, p + "allowPrivilegeEscalation: false")
        need(csc.get("capabilities", {}).get("drop") == ["ALL"], p + "capabilities.drop: [ALL]")
        need(not csc.get("capabilities", {}).get("add"), p + "no capability added")
        need(c.get("resources", {}).get("limits", {}).get("memory"), p + "a memory limit")
        need(c.get("resources", {}).get("requests", {}).get("memory"), p + "a memory request")
        ports = {pt["name"]: pt["containerPort"] for pt in c.get("ports", [])}
        port = ports.get("http")
        need(port, p + "a container port named http")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            g = c.get(probe, {}).get("httpGet", {})
            need(g.get("path") == path and g.get("port") == port,
                 p + f"{probe} must GET {path} on port {port} (a number), got {g}")
        annotations = spec["template"]["metadata"].get("annotations", {})
        need(len(annotations.get("checksum/config", "")) == 64, p + "a checksum/config annotation (sha256)")
        env = {e["name"]: e for e in c.get("env", [])}
        for e in c.get("env", []):
            need("valueFrom" not in e or "secretKeyRef" not in e["valueFrom"],
                 p + f"env {e['name']} comes from a Secret: secrets go in files only")
        need(not c.get("envFrom"), p + "no envFrom (secrets go in files only)")
        creds = env.get("CREDENTIALS_DIRECTORY", {}).get("value")
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        secret_vols = [n for n, v in vols.items() if "secret" in v]
        need(len(secret_vols) == 1 and mounts.get(secret_vols[0], {}).get("mountPath") == creds,
             p + f"the Secret must be mounted at $CREDENTIALS_DIRECTORY ({creds})")
        state = [n for n, v in vols.items() if "persistentVolumeClaim" in v]
        need(len(state) == 1 and vols[state[0]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
             and mounts.get(state[0], {}).get("mountPath") == STATE_DIR,
             p + f"the PVC must be mounted at {STATE_DIR}")
        need("state_path" not in cm["data"]["config.toml"].replace("# state_path", ""),
             p + "the config must not set state_path")
        need(svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items(),
             p + "the Service must select the pod")
        need(spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(),
             p + "the Deployment's selector must match its pod")
        sports = {pt["name"]: pt for pt in svc["spec"]["ports"]}
        need(sports.get("http", {}).get("port") == port, p + "the Service's port http is the listen port")
        need(pod.get("automountServiceAccountToken") is False, p + "no service account token in the pod")
    if problems:
        for x in problems:
            print(f"check_rendered: FAIL: {x}", file=sys.stderr)
        sys.exit(1)
    print(f"check_rendered: {len(accounts)} account(s): one replica, Recreate, non-root, read-only root, "
          "no privilege escalation, capabilities dropped, memory limit, probes on the listen port, "
          "secrets as files in $CREDENTIALS_DIRECTORY, state on the PVC, checksum annotation")


def monitoring(rendered, alerts, dashboard):
    docs = load(rendered)
    problems = []
    sm = one(docs, "ServiceMonitor")
    rule = one(docs, "PrometheusRule")
    dash = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    services = [d for d in docs if d["kind"] == "Service"]
    if not (sm and rule and len(dash) == 1 and services):
        problems.append("expected a ServiceMonitor, a PrometheusRule, one dashboard ConfigMap and Services")
    else:
        sel = sm["spec"]["selector"]["matchLabels"]
        for s in services:
            name = s["metadata"]["name"]
            if not sel.items() <= s["metadata"]["labels"].items():
                problems.append(f"the ServiceMonitor does not select Service {name}")
            if sm["spec"]["endpoints"][0]["port"] not in [p.get("name") for p in s["spec"]["ports"]]:
                problems.append(f"Service {name} has no port {sm['spec']['endpoints'][0]['port']}")
            # Prometheus sanitizes a label name to [a-zA-Z0-9_]: the relabeling's source is that name
            meta = "__meta_kubernetes_service_label_" + "".join(
                ch if ch.isalnum() else "_" for ch in ACCOUNT_LABEL)
            src = sm["spec"]["endpoints"][0]["relabelings"][0]["sourceLabels"][0]
            if src != meta or ACCOUNT_LABEL not in s["metadata"]["labels"]:
                problems.append(f"the relabeling reads {src}, Service {name} gives {meta}")
        with open(alerts) as f:
            shipped = yaml.safe_load(f)
        if rule["spec"]["groups"] != shipped["groups"]:
            problems.append(f"the PrometheusRule's groups differ from {alerts}")
        with open(dashboard) as f:
            want = json.load(f)
        got = json.loads(dash[0]["data"]["chatapp-kommo-sync.json"])
        if got != want:
            problems.append(f"the dashboard ConfigMap differs from {dashboard}")
    if problems:
        for x in problems:
            print(f"check_rendered: FAIL: {x}", file=sys.stderr)
        sys.exit(1)
    print(f"check_rendered: the ServiceMonitor selects {len(services)} Service(s) on port http; "
          "the PrometheusRule is alerts.yml; the dashboard ConfigMap is grafana-dashboard.json")


def extract(rendered, account, out):
    mine = [d for d in of_account(load(rendered), account)
            if d["kind"] in ("Deployment", "ConfigMap", "Secret", "PersistentVolumeClaim")]
    kinds = sorted(d["kind"] for d in mine)
    if kinds != ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Secret"]:
        sys.exit(f"check_rendered: FAIL: {account}: expected a ConfigMap, Deployment, PVC and Secret, got {kinds}")
    # podman 4.3 turns every containerPort into a port published on the host, which needs a
    # network: with --network none it refuses ("PortMappings can only be used with Bridge or
    # slirp4netns networking"). The run reaches the port on the pod's own loopback instead, so
    # the copy it runs has no `ports` (the probes name the port by number and stay as rendered).
    for d in mine:
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                c.pop("ports", None)
    # podman kube play wants the Deployment's volumes' sources before it
    order = {"ConfigMap": 0, "Secret": 1, "PersistentVolumeClaim": 2, "Deployment": 3}
    with open(out, "w") as f:
        yaml.safe_dump_all(sorted(mine, key=lambda d: order[d["kind"]]), f, sort_keys=False)


def annotation(rendered, account):
    dep = one(of_account(load(rendered), account), "Deployment")
    print(dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"])


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"contract": lambda: contract(args[0], args[1:]),
     "monitoring": lambda: monitoring(*args),
     "extract": lambda: extract(*args),
     "annotation": lambda: annotation(*args)}[cmd]()
