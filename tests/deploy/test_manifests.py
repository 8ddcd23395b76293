"""Offline checks of deploy/: Kubernetes schemas, and the flags and ports the server really has.

    .venv/bin/pytest tests/deploy -q

Every manifest in deploy/k8s is validated with `kubernetes-validate` (strict: unknown
fields are errors) against the pinned Kubernetes versions below. KServe's
InferenceService is a custom resource whose schema that package does not ship, so it is
checked structurally instead, and its predictor container is validated as a core/v1
Container inside a Pod. Both kinds are cross-checked against `tl2edge serve`'s parser
(every arg is a real flag, ports, probes, grace period, volume paths) and the Dockerfile
(user id, exposed ports).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extra")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve"
# The oldest Kubernetes we support (native gRPC probes are GA since 1.27) and a recent one.
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(f"{path.name}:{d['kind']}/{d['metadata']['name']}", d) for d in load(path)]
    return out


def by_kind(kind: str) -> list[dict]:
    return [d for _, d in k8s_docs() if d["kind"] == kind]


def serve_parser():
    from tl2edge.cli import build_parser

    return build_parser("serve")


def serve_args(args: list[str]):
    """Parse container args exactly as `tl2edge serve` would (SystemExit on a bad flag)."""
    return serve_parser().parse_args(["serve", *args])


def entrypoint():
    spec = importlib.util.spec_from_file_location(
        "tl2edge_entrypoint", ROOT / "deploy" / "container" / "entrypoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dockerfile_user() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users, "the Dockerfile sets no numeric USER"
    return int(users[-1].split(":")[0])


def schema_error(exc) -> str:
    """`spec/template/.../port: 'x' is not of type 'integer'`, without the schema dump."""
    return "/".join(str(p) for p in exc.path) + ": " + exc.message


ids, docs = zip(*k8s_docs(), strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", docs, ids=ids)
def test_k8s_manifest_matches_schema(doc, version):
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as exc:
        pytest.fail(f"Kubernetes {version}: {schema_error(exc)}")


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"kustomization resources {sorted(listed)} != files {sorted(on_disk)}"
    images = {i["name"] for i in kust["images"]}
    for d in by_kind("Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c["image"].rsplit(":", 1)[0] in images


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _check_container_against_server(container: dict, *, probe_port_key: str) -> None:
    """Args parse as `tl2edge serve` flags; env names are flags; probes hit the gRPC port."""
    args = serve_args(container.get("args", []))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[probe_port_key] == args.port, (
        f"container port {probe_port_key}={ports[probe_port_key]} but --port={args.port}"
    )
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            assert container[kind]["grpc"]["port"] == args.port, f"{kind} is not on --port"
    ep = entrypoint()
    known = {
        ep.env_name(o)
        for a in serve_parser()._subparsers._group_actions[0].choices["serve"]._actions
        for o in a.option_strings
        if o.startswith("--")
    }
    for env in container.get("env", []):
        if env["name"].startswith("TL2EDGE_"):
            assert env["name"] in known, f"{env['name']} is no `tl2edge serve` flag"
    return args


def test_deployment_agrees_with_the_server_and_the_image():
    (dep,) = by_kind("Deployment")
    pod = dep["spec"]["template"]["spec"]
    container = _container(dep)
    args = _check_container_against_server(container, probe_port_key="grpc")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == args.metrics_port

    # Draining: preStop + --grace-s must finish before the kubelet's SIGKILL.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + args.grace_s + 5
    assert pod["terminationGracePeriodSeconds"] >= needed, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop "
        f"{pre_stop[1]} s + --grace-s {args.grace_s} s + 5 s margin"
    )

    # The repository comes from a read-only volume mounted where --repository points.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert str(args.repository) in mounts and mounts[str(args.repository)]["readOnly"]
    claim = next(v for v in pod["volumes"] if v["name"] == mounts[str(args.repository)]["name"])
    pvcs = {d["metadata"]["name"] for d in by_kind("PersistentVolumeClaim")}
    assert claim["persistentVolumeClaim"]["claimName"] in pvcs

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user()
    assert container["resources"]["requests"]["cpu"], "the HPA needs a CPU request"


def test_service_hpa_pdb_point_at_the_deployment():
    (dep,) = by_kind("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in _container(dep)["ports"]}
    for svc in by_kind("Service"):
        assert svc["spec"]["selector"].items() <= labels.items(), svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in port_names, f"{svc['metadata']['name']}: {p['targetPort']}"
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot roll without a gap"
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_dockerfile_exposes_the_ports_the_manifests_use():
    text = (ROOT / "Dockerfile").read_text()
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", text, re.M) for p in line.split()}
    (dep,) = by_kind("Deployment")
    assert {p["containerPort"] for p in _container(dep)["ports"]} <= exposed
    env = dict(re.findall(r"(TL2EDGE_[A-Z_]+)=(\S+)", text))
    assert int(env["TL2EDGE_PORT"]) in exposed and int(env["TL2EDGE_METRICS_PORT"]) in exposed


# ---- KServe -------------------------------------------------------------------------------


def inference_service() -> dict:
    (isvc,) = load(KSERVE / "inferenceservice.yaml")
    return isvc


def test_inferenceservice_structure():
    isvc = inference_service()
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert DNS1123.match(isvc["metadata"]["name"]) and len(isvc["metadata"]["name"]) <= 45
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= {
        "containers", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "timeout",
        "serviceAccountName", "nodeSelector", "tolerations", "volumes", "affinity",
        "containerConcurrency", "canaryTrafficPercent", "securityContext",
    }, "unknown predictor fields"  # fmt: skip
    assert predictor["scaleMetric"] in {"cpu", "memory", "concurrency", "rps"}
    assert 0 < predictor["minReplicas"] <= predictor["maxReplicas"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container", "KServe looks for this container name"
    # Knative: exactly one port, named h2c for gRPC (HTTP/2 without TLS).
    assert [p["name"] for p in container["ports"]] == ["h2c"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_inferenceservice_container_is_a_valid_core_container(version):
    (container,) = inference_service()["spec"]["predictor"]["containers"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}}
    pod["spec"] = {"containers": [container]}
    try:
        kv.validate(pod, version, strict=True)
    except kv.ValidationError as exc:
        pytest.fail(f"Kubernetes {version}: {schema_error(exc)}")


def test_inferenceservice_agrees_with_the_server():
    (container,) = inference_service()["spec"]["predictor"]["containers"]
    args = _check_container_against_server(container, probe_port_key="h2c")
    env = {e["name"]: e for e in container["env"]}
    # The storage initializer downloads STORAGE_URI to /mnt/models.
    assert "STORAGE_URI" in env and str(args.repository) == "/mnt/models"
    assert container["securityContext"]["runAsUser"] == dockerfile_user()


def test_operations_doc_commands_use_real_flags():
    """`tl2edge serve ...` commands in docs/operations.md code blocks parse with the real parser."""
    doc = (ROOT / "docs" / "operations.md").read_text().replace("\\\n", " ")
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", doc, re.M | re.S)
    lines = [ln.strip() for block in blocks for ln in block.splitlines()]
    commands = [ln[ln.index("tl2edge serve ") :] for ln in lines if "tl2edge serve " in ln]
    assert commands, "docs/operations.md shows no `tl2edge serve` command"
    for cmd in commands:
        words = shlex.split(cmd.split(" #")[0])[2:]
        words = words[: next((i for i, w in enumerate(words) if w in {"&", "&&", "|", ">"}), None)]
        serve_args(words)
