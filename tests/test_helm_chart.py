"""deploy/helm/zitadel-gateway, rendered by Helm's own engine and checked object by object (see tests/chart.py).

Every rendered object is validated against the Kubernetes JSON schemas; then the wiring: probes on the admin port,
the ports the config listens on, the Secret reference, the security context, the refusals (memory cache with
replicas), and the README's three installs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from gateway.config import parse_config
from gateway.forward.headers import IDENTITY_HEADERS

from .chart import CHART, FULLNAME, NAMESPACE, REPO, Json, Rendered, kubernetes_problems, merged, render, render_error
from .support import ENV

REDIS = {"cache": {"backend": "redis", "url": "redis://redis:6379/0"}}
EVERYTHING: Json = {
    **REDIS,
    "replicaCount": 3,
    "workers": 2,
    "forwardAuth": {"enabled": True, "ingressNginxHeaders": True},
    "autoscaling": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "networkPolicy": {"enabled": True},
    "zitadel": {"keyFileKey": "key.json"},
    "extraEnv": [{"name": "OTEL_SERVICE_NAME", "value": "gw"}],
    "config": {
        "trusted_proxies": ["10.0.0.0/8"],
        "idp": {"timeout_seconds": 3},
        "tracing": {"enabled": True, "endpoint": "http://otel-collector.monitoring:4318/v1/traces"},
    },
}
VARIANTS: dict[str, Json] = {"defaults": {}, "everything": EVERYTHING, "redis-secret": {
    "replicaCount": 2, "cache": {"backend": "redis", "urlSecret": {"name": "redis", "key": "url"}}
}}  # fmt: skip


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render()


@pytest.fixture(scope="module")
def everything() -> Rendered:
    return render(EVERYTHING)


def pod_spec(rendered: Rendered) -> Json:
    spec: Json = rendered.deployment["spec"]["template"]["spec"]
    return spec


# -- Helm's own checks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_helm_lint_is_clean(name: str) -> None:
    report = helm_python.lint(CHART, VARIANTS[name], strict=True)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error; 1 is info
    assert problems == []
    assert helm_python.helm_sdk_version().startswith("v")  # Helm's Go SDK itself, not a look-alike


@pytest.mark.parametrize(
    "values, where",
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"cache": {"backend": "memcached"}}, "/cache/backend"),
        ({"zitadel": {"domain": "my-instance.zitadel.cloud"}}, "/zitadel/domain"),
        ({"config": {"listen": {"port": 1}}}, "listen"),  # a key the chart owns
        ({"config": {"idp": {"client_secret": "x"}}}, "client_secret"),  # never a secret in values
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "/securityContext/readOnlyRootFilesystem"),
        ({"ports": {"admin": 70000}}, "/ports/admin"),
        ({"routes": []}, "/routes"),
        ({"clientSecret": "x"}, "clientSecret"),
    ],
)
def test_values_schema_refuses(values: Json, where: str) -> None:
    message = render_error(values)
    assert "schema" in message and where in message


# -- every object is a valid Kubernetes object -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_object_validates_against_the_kubernetes_schemas(name: str) -> None:
    rendered = render(VARIANTS[name])
    problems = [p for obj in rendered.objects if obj["kind"] != "ServiceMonitor" for p in kubernetes_problems(obj)]
    assert problems == []
    for obj in rendered.objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "gw"


def test_the_objects(default: Rendered, everything: Rendered) -> None:
    assert default.kinds() == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    assert everything.kinds() == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "Service",
        "ServiceMonitor",
    ]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_rendered_config_is_accepted_by_the_gateway(name: str) -> None:
    rendered = render(VARIANTS[name])
    env = {**ENV, "REDIS_URL": "redis://redis:6379/0"}
    config = parse_config(rendered.config, source="configmap", env=env)
    assert config.idp is not None and config.idp.issuer == "https://your-instance.zitadel.cloud"
    assert [r.id for r in config.routes] == ["public", "private", "private-scoped"]
    tracing = VARIANTS[name].get("config", {}).get("tracing")
    assert (config.tracing is not None) == bool(tracing)


# -- wiring --------------------------------------------------------------------------------------------------------


def test_probes_ask_the_admin_listener(default: Rendered) -> None:
    container, config = default.container, default.config
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert default.container_port("admin") == config["admin"]["port"] == 9091
    assert config["admin"]["host"] == "0.0.0.0"  # the kubelet probes the pod's address, not its loopback


def test_the_service_reaches_the_proxy_listener(default: Rendered) -> None:
    [port] = default.one("Service")["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert default.container_port("http") == default.config["listen"]["port"] == 5000
    assert default.one("Service")["spec"]["selector"] == default.deployment["spec"]["selector"]["matchLabels"]
    assert "forward_auth" not in default.config
    assert {p["name"] for p in default.container["ports"]} == {"http", "admin"}


def test_forward_auth_port_and_service_when_on(everything: Rendered) -> None:
    config = everything.config
    assert config["forward_auth"] == {"host": "0.0.0.0", "port": 9092, "original": "headers"}
    assert everything.container_port("forward-auth") == 9092
    service = everything.one("Service", f"{FULLNAME}-forward-auth")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, "forward-auth")]
    assert service["spec"]["selector"] == everything.deployment["spec"]["selector"]["matchLabels"]
    headers = everything.one("ConfigMap", f"{FULLNAME}-nginx-auth-headers")["data"]
    assert headers == {
        "X-Forwarded-Method": "$request_method",
        "X-Forwarded-Uri": "$request_uri",
        "X-Forwarded-Host": "$http_host",
        "X-Forwarded-Proto": "$scheme",
    }


def test_the_client_secret_comes_from_the_existing_secret(default: Rendered) -> None:
    env = default.env()
    for name, key in (("ZITADEL_CLIENT_ID", "client-id"), ("ZITADEL_CLIENT_SECRET", "client-secret")):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": "zitadel-gateway", "key": key}}}
    assert "ZITADEL_KEY_FILE" not in env
    assert default.all("Secret") == []  # the chart writes no Secret: it refers to one


def test_the_key_file_is_mounted_from_the_existing_secret(everything: Rendered) -> None:
    env, spec = everything.env(), pod_spec(everything)
    assert "ZITADEL_CLIENT_SECRET" not in env
    [volume] = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "zitadel-gateway"
    assert volume["secret"]["items"] == [{"key": "key.json", "path": "key.json"}]
    [mount] = [m for m in everything.container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert env["ZITADEL_KEY_FILE"]["value"] == f"{mount['mountPath']}/key.json"


def test_a_redis_url_with_a_password_comes_from_a_secret() -> None:
    rendered = render(VARIANTS["redis-secret"])
    assert rendered.env()["REDIS_URL"]["valueFrom"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    assert rendered.config["cache"]["url"] == "${REDIS_URL}"  # filled from the environment by the gateway


def test_no_secret_in_any_object(everything: Rendered) -> None:
    text = yaml.safe_dump_all(everything.objects)
    for secret in ENV.values():
        assert secret not in text
    assert "client_secret" not in everything.config_text


def test_the_config_file_is_the_configmap(default: Rendered) -> None:
    command = default.container["command"]
    assert command[:3] == ["python", "-m", "gateway"]
    config_path = Path(command[command.index("--config") + 1])
    [mount] = [m for m in default.container["volumeMounts"] if m["name"] == "config"]
    assert config_path.parent == Path(mount["mountPath"]) and mount["readOnly"] is True
    [volume] = [v for v in pod_spec(default)["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == FULLNAME
    assert config_path.name in default.one("ConfigMap", FULLNAME)["data"]


def test_security_context(default: Rendered) -> None:
    pod, container = pod_spec(default), default.container
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile = (REPO / "Dockerfile").read_text()
    uid = re.search(r"--uid (\d+)", dockerfile)
    assert uid is not None and pod["securityContext"]["runAsUser"] == int(uid.group(1))  # the image's own user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["runAsNonRoot"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    resources = container["resources"]
    assert resources["requests"].keys() == resources["limits"].keys() == {"cpu", "memory"}


def test_rolling_updates_drop_no_request(default: Rendered) -> None:
    pod, container = pod_spec(default), default.container
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pause > 0
    assert pod["terminationGracePeriodSeconds"] > pause + default.config["shutdown_grace_seconds"]
    assert default.deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    longer = render({"shutdownGraceSeconds": 120})
    assert pod_spec(longer)["terminationGracePeriodSeconds"] > 120 + pause
    assert "longer than preStopSeconds + shutdownGraceSeconds" in render_error({"terminationGracePeriodSeconds": 30})


def test_pod_disruption_budget(default: Rendered) -> None:
    budget = default.one("PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    assert (
        budget["selector"]["matchLabels"].items()
        <= default.deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_autoscaler_owns_the_replica_count(everything: Rendered) -> None:
    hpa = everything.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert "replicas" not in everything.deployment["spec"]
    assert render().deployment["spec"]["replicas"] == 1


def test_service_monitor_scrapes_the_admin_port(everything: Rendered) -> None:
    monitor = everything.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    selected = [
        s
        for s in everything.all("Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == [f"{FULLNAME}-metrics"]
    [port] = selected[0]["spec"]["ports"]
    assert port["name"] == endpoint["port"] and port["targetPort"] == "admin"


def test_network_policy_lets_only_the_ingress_reach_forward_auth(everything: Rendered) -> None:
    policy = everything.one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == everything.deployment["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert set(by_port) == {p["name"] for p in everything.container["ports"]}
    assert by_port["forward-auth"]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert "from" not in by_port["http"]  # the proxy stays open unless proxyFrom says otherwise
    assert "forwardAuthFrom" in render_error(merged(EVERYTHING, {"networkPolicy": {"forwardAuthFrom": []}}))


# -- refusals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [{"replicaCount": 2}, {"autoscaling": {"enabled": True}}, {"workers": 4}],
    ids=["replicas", "autoscaling", "workers"],
)
def test_memory_cache_with_several_processes_is_refused(values: Json) -> None:
    message = render_error(values)
    assert "cache.backend is memory" in message and "Redis URL" in message
    assert render(merged(values, REDIS)).config["cache"]["backend"] == "redis"


def test_redis_without_a_url_is_refused() -> None:
    assert "set the Redis URL" in render_error({"cache": {"backend": "redis"}})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"zitadel": {"existingSecret": ""}}, "schema"),
        ({"zitadel": {"clientSecretKey": ""}}, "clientSecretKey"),
        ({"ports": {"admin": 5000}}, "must differ"),
    ],
)
def test_other_refusals(values: Json, message: str) -> None:
    assert message in render_error(values)


# -- the README's three installs -----------------------------------------------------------------------------------


def readme_blocks() -> dict[str, Any]:
    """The YAML blocks of the README's Kubernetes section, by the file name in their first line."""
    text = (REPO / "README.md").read_text()
    section = text.split("## On Kubernetes: the Helm chart", 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.S):
        first = block.splitlines()[0]
        assert first.startswith("# ") and first.split()[1].rstrip(":").endswith(".yaml"), first
        blocks[first.split()[1].rstrip(":")] = list(yaml.safe_load_all(block))
    return blocks


def test_readme_has_the_three_installs() -> None:
    assert set(readme_blocks()) == {"in-front.yaml", "forward-auth-nginx.yaml", "ingress-nginx.yaml", "traefik.yaml"}


def test_readme_in_front_of_a_backend() -> None:
    [values] = readme_blocks()["in-front.yaml"]
    rendered = render(values, namespace="shop")
    assert rendered.config["upstreams"] == {"default": "http://orders.shop.svc.cluster.local:8080"}
    assert rendered.deployment["spec"]["replicas"] == 2
    assert not [p for obj in rendered.objects for p in kubernetes_problems(obj)]


def forward_auth_url(rendered: Rendered, namespace: str) -> str:
    service = rendered.one("Service", f"{FULLNAME}-forward-auth")
    return f"http://{service['metadata']['name']}.{namespace}.svc.cluster.local/"


def test_readme_forward_auth_for_ingress_nginx() -> None:
    [values] = readme_blocks()["forward-auth-nginx.yaml"]
    rendered = render(values, namespace="shop")
    [ingress] = readme_blocks()["ingress-nginx.yaml"]
    assert kubernetes_problems(ingress) == []
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"] == forward_auth_url(rendered, "shop")
    headers_map = rendered.one("ConfigMap", f"{FULLNAME}-nginx-auth-headers")["metadata"]["name"]
    assert annotations["nginx.ingress.kubernetes.io/auth-proxy-set-headers"] == f"shop/{headers_map}"
    assert annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(",") == list(IDENTITY_HEADERS)
    assert rendered.config["forward_auth"]["original"] == "headers"
    assert rendered.one("NetworkPolicy")


def test_readme_traefik_forward_auth_middleware() -> None:
    rendered = render({"forwardAuth": {"enabled": True}}, namespace="shop")
    middleware, ingress = readme_blocks()["traefik.yaml"]
    assert kubernetes_problems(ingress) == []
    assert middleware["kind"] == "Middleware" and middleware["apiVersion"] == "traefik.io/v1alpha1"
    forward_auth = middleware["spec"]["forwardAuth"]
    assert forward_auth["address"] == forward_auth_url(rendered, "shop")
    assert forward_auth["trustForwardHeader"] is False
    assert forward_auth["authResponseHeaders"] == list(IDENTITY_HEADERS)
    reference = f"{middleware['metadata']['namespace']}-{middleware['metadata']['name']}@kubernetescrd"
    assert ingress["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.middlewares"] == reference


def test_default_namespace_is_the_release_namespace(default: Rendered) -> None:
    assert NAMESPACE == "apps" and default.deployment["metadata"]["name"] == FULLNAME
