"""The Helm chart, rendered by Helm's own template engine, and its objects validated against Kubernetes' schemas.

Helm itself comes from the PyPI package `helm-python-sdk` (`helm_python`): Helm's Go SDK (v4) built as a C
library and bound with ctypes. `Chart.render` is `helm template` (values.schema.json checked, `fail` honoured);
`helm_python.lint` is `helm lint`. No cluster is needed. `kubernetes-validate` ships the Kubernetes JSON schemas.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "zitadel-gateway"
RELEASE = "gw"
NAMESPACE = "apps"
FULLNAME = f"{RELEASE}-zitadel-gateway"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest the schemas know.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

Json = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    objects: list[Json]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def all(self, kind: str) -> list[Json]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Json:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} objects of kind {kind} named {name}: {[o['metadata'] for o in found]}"
        return found[0]

    @property
    def deployment(self) -> Json:
        return self.one("Deployment")

    @property
    def container(self) -> Json:
        [container] = self.deployment["spec"]["template"]["spec"]["containers"]
        found: Json = container
        return found

    @property
    def config_text(self) -> str:
        text: str = self.one("ConfigMap", self.deployment["metadata"]["name"])["data"]["config.yaml"]
        return text

    @property
    def config(self) -> Json:
        document: Json = yaml.safe_load(self.config_text)
        return document

    def container_port(self, name: str) -> int:
        [port] = [p["containerPort"] for p in self.container["ports"] if p["name"] == name]
        found: int = port
        return found

    def env(self) -> dict[str, Json]:
        return {e["name"]: e for e in self.container.get("env", [])}


def merged(base: Json, extra: Json) -> Json:
    """`extra` over `base`, maps merged key by key (what `helm -f a -f b` does)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(values: Json | None = None, namespace: str = NAMESPACE) -> Rendered:
    """`helm template gw deploy/helm/zitadel-gateway --namespace apps` with these values; raises Helm's errors."""
    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)
    objects: list[Json] = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects)


def render_error(values: Json) -> str:
    """The message Helm refuses these values with (fails the test if it renders)."""
    try:
        render(values)
    except helm_python.HelmError as exc:
        return str(exc)
    raise AssertionError(f"rendered, but should have been refused: {values}")


def kubernetes_problems(obj: Json) -> list[str]:
    """Validate one object against the Kubernetes JSON schemas (strict: no unknown fields), at each version."""
    problems = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} at {version}: {where}: {exc.message}")
    return problems
