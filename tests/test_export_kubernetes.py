"""`stackvisor export kubernetes`: every field's mapping over small stacks, the names, the
images, what does not carry over, and every document of the shipped stacks validated
against Kubernetes' own schemas (strict: an unknown field is an error)."""

from __future__ import annotations

import os
import pwd
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

from stackvisor.config import load_config
from stackvisor.config.schema import StackConfig
from stackvisor.export import base, kubernetes
from stackvisor.export.kubernetes_pod import APP_DIR, WAIT_IMAGE, escaped

# The oldest release still common in clusters, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30", "1.37")
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def stack(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> StackConfig:
    path = tmp_path / "services.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, environ or {})


def export(
    config: StackConfig, *, image: str | None = "app:1", one_file: bool = True, **options: Any
) -> base.Exported:
    return kubernetes.export(base.plan(config, image=image), one_file=one_file, **options)


def documents(result: base.Exported) -> list[dict[str, Any]]:
    return [doc for text in result.files.values() for doc in yaml.safe_load_all(text) if doc]


def find(result: base.Exported, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents(result) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} documents"
    return found[0]


def pod_of(result: base.Exported, name: str) -> dict[str, Any]:
    workloads = [
        d for d in documents(result) if d["kind"] in ("Deployment", "Job") and d["metadata"]["name"] == name
    ]
    assert len(workloads) == 1
    spec: dict[str, Any] = workloads[0]["spec"]["template"]["spec"]
    return spec


def container(result: base.Exported, name: str) -> dict[str, Any]:
    found: dict[str, Any] = pod_of(result, name)["containers"][0]
    return found


def env(result: base.Exported, name: str) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(result, name).get("env", [])}


# ----- objects, names, labels ------------------------------------------------------------


def test_a_service_with_a_port_is_a_deployment_and_a_service_that_selects_its_pod(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        name: Shop
        services:
          api: {command: serve, port: 8000}
          worker: {command: work}
        """,
    )
    result = export(config)
    assert list(result.files) == ["shop.yaml"]
    kinds = [(d["kind"], d["metadata"]["name"]) for d in documents(result)]
    assert kinds == [("Deployment", "api"), ("Service", "api"), ("Deployment", "worker")]
    deployment, service = find(result, "Deployment", "api"), find(result, "Service", "api")
    labels = {"app.kubernetes.io/name": "api", "app.kubernetes.io/part-of": "shop"}
    assert deployment["metadata"]["labels"] == labels
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert deployment["spec"]["template"]["metadata"]["labels"] == labels
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"] == [{"port": 8000, "targetPort": 8000, "protocol": "TCP"}]
    assert pod_of(result, "api")["restartPolicy"] == "Always"
    assert pod_of(result, "api")["enableServiceLinks"] is False


@pytest.mark.parametrize(
    ("written", "name"),
    [
        ("api", "api"),
        ("My_API", "my-api"),
        ("web.front--end_", "web-front-end"),
        ("9lives", "s-9lives"),
        ("_", "s"),
        ("x" * 80, "x" * 63),
        ("a" * 62 + "-b", "a" * 62),
    ],
)
def test_names_are_dns_labels(written: str, name: str) -> None:
    assert kubernetes.kube_name(written) == name
    assert DNS_LABEL.fullmatch(name)


def test_names_that_come_out_alike_are_kept_apart() -> None:
    names = kubernetes.object_names(("my_api", "my-api", "My.Api", "z" * 70, "z" * 64))
    assert list(names.values()) == ["my-api", "my-api-2", "my-api-3", "z" * 63, "z" * 61 + "-2"]
    assert all(DNS_LABEL.fullmatch(n) for n in names.values())


def test_object_names_and_the_stacks_label_come_from_the_file(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        name: My Stack!
        services:
          Web_Front: {command: serve, port: 3000}
          web-front: {command: serve, port: 3001, depends_on: [Web_Front]}
        """,
    )
    result = export(config, one_file=False)
    assert sorted(result.files) == [
        "web-front-2-deployment.yaml",
        "web-front-2-service.yaml",
        "web-front-deployment.yaml",
        "web-front-service.yaml",
    ]
    assert (
        find(result, "Service", "web-front-2")["metadata"]["labels"]["app.kubernetes.io/part-of"]
        == "my-stack"
    )
    assert pod_of(result, "web-front-2")["initContainers"][0]["command"][-1] == (
        "until nc -z -w 2 web-front 3000; do sleep 1; done"
    )


def test_labels_become_annotations_and_refused_keys_are_said(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          api:
            command: serve
            labels: {com.example.team: payments, "not a key": x, "two\\nlines": y}
        """,
    )
    result = export(config)
    assert find(result, "Deployment", "api")["metadata"]["annotations"] == {"com.example.team": "payments"}
    assert "api: labels not a key, two\nlines: not a valid annotation key in Kubernetes" in result.warnings
    assert "# not carried over: api: labels not a key, two lines: not" in next(iter(result.files.values()))


# ----- images ----------------------------------------------------------------------------


def test_the_image_is_the_services_own_else_the_common_one(tmp_path: Path) -> None:
    config = stack(tmp_path, "services: {api: {command: serve}, db: {command: db}}")
    result = export(config, image="base:2", images={"db": "postgres:17"})
    assert container(result, "api")["image"] == "base:2"
    assert container(result, "db")["image"] == "postgres:17"


def test_services_without_an_image_are_named_in_one_error(tmp_path: Path) -> None:
    config = stack(tmp_path, "services: {api: {command: a}, db: {command: b}, web: {command: c}}")
    with pytest.raises(base.ExportError, match=r"no image for api, web: .*--image IMAGE.*x-kubernetes"):
        export(config, image=None, images={"db": "postgres:17"})
    with pytest.raises(base.ExportError, match="apii: the stack has no such service"):
        export(config, images={"apii": "x:1"})


def test_the_images_of_the_files_extension_fields_come_with_the_target(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        x-base: &base {command: serve}
        services:
          api: {<<: *base, x-kubernetes: {image: "registry.example/api:3"}}
          worker: {command: work}
        """,
    )
    assert "x-kubernetes" not in config.services["api"].model_dump()  # dropped at load
    target = base.plan(config, image="app:1", images={"api": "registry.example/api:3"})
    result = kubernetes.export(target, images={"worker": "worker:2"})
    assert container(result, "api")["image"] == "registry.example/api:3"
    assert container(result, "worker")["image"] == "worker:2"


# ----- command, environment, folder, user ------------------------------------------------


def test_a_string_command_runs_through_the_shell_a_list_is_execd(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          simple: {command: "python -m http.server ${PORT}", port: 8080}
          compound: {command: "migrate && echo done"}
          listed: {command: [python, -m, api, --port, "${PORT}"], port: 8000}
          alone: {command: [serve]}
        """,
    )
    result = export(config)
    simple = container(result, "simple")
    assert (simple["command"], simple["args"]) == (["/bin/sh", "-c"], ["exec python -m http.server 8080"])
    assert container(result, "compound")["args"] == ["migrate && echo done"]
    listed = container(result, "listed")
    assert (listed["command"], listed["args"]) == (["python"], ["-m", "api", "--port", "8000"])
    assert container(result, "alone")["command"] == ["serve"]
    assert "args" not in container(result, "alone")


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("echo $(date)", "echo $$(date)"),
        ("echo $$(date)", "echo $$$$(date)"),
        ("echo $HOME $1 cost$", "echo $HOME $1 cost$"),
        ("a$$b", "a$$$b"),
    ],
)
def test_what_kubernetes_would_expand_is_escaped(text: str, written: str) -> None:
    assert escaped(text) == written


def test_dollars_reach_the_process_as_written(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          job:
            command: sh -c 'echo $(date) $$HOME'
            env: {WHEN: "$(date)", PRICE: "5$$"}
        """,
    )
    result = export(config)
    assert container(result, "job")["args"] == ["exec sh -c 'echo $$(date) $HOME'"]
    assert env(result, "job") == {"WHEN": "$$(date)", "PRICE": "5$"}


def test_the_environment_has_the_ports_and_names_other_services_by_their_service(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          db: {command: db, port: 5432}
          cache: {command: cache, port: 6379}
          migrate:
            command: migrate
            depends_on: {db: {condition: service_started}}
          api:
            command: serve
            port: 8000
            depends_on: {migrate: {condition: service_completed_successfully}, cache: {}}
            env:
              DATABASE_URL: postgres://app@127.0.0.1:${DB_PORT}/app
              CACHE: localhost:${CACHE_PORT}
              CACHE6: "[::1]:6379"
              SELF: http://127.0.0.1:${PORT}/
              ELSEWHERE: http://127.0.0.1:9999/
              NOT_A_HOST: "x127.0.0.1:5432"
        """,
    )
    values = env(export(config), "api")
    assert values["DATABASE_URL"] == "postgres://app@db:5432/app"
    assert values["CACHE"] == "cache:6379"
    assert values["CACHE6"] == "cache:6379"
    assert values["SELF"] == "http://127.0.0.1:8000/"
    assert values["ELSEWHERE"] == "http://127.0.0.1:9999/"
    assert values["NOT_A_HOST"] == "x127.0.0.1:5432"
    assert values["DB_PORT"] == "5432"
    assert values["CACHE_PORT"] == "6379"
    assert values["PORT"] == "8000"


def test_a_command_on_the_loopback_is_said(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          web: {command: "python -m http.server ${PORT} --bind 127.0.0.1", port: 8080}
          open: {command: "python -m http.server ${PORT} --bind 0.0.0.0", port: 8081}
        """,
    )
    result = export(config)
    assert [w for w in result.warnings if "127.0.0.1 or localhost" in w] == [
        "web: its command names 127.0.0.1 or localhost, which is its own pod: a server must listen "
        "on 0.0.0.0 to be reached through its Service, other services are reached by their names"
    ]


def test_the_working_folder_is_under_the_images_app_folder_when_relative(tmp_path: Path) -> None:
    (tmp_path / "app" / "api").mkdir(parents=True)
    config = stack(
        tmp_path,
        f"""
        services:
          rel: {{command: serve, working_dir: app/api}}
          abs: {{command: serve, working_dir: {tmp_path}}}
          none: {{command: serve}}
        """,
    )
    result = export(config)
    assert container(result, "rel")["workingDir"] == f"{APP_DIR}/app/api"
    assert container(result, "abs")["workingDir"] == str(tmp_path)
    assert "workingDir" not in container(result, "none")
    assert f"rel: working_dir: app/api is taken as {APP_DIR}/app/api" in "\n".join(result.warnings)


def test_a_numeric_user_runs_as_its_ids_a_name_is_said(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.getuid())
    config = stack(
        tmp_path,
        f"""
        services:
          ids: {{command: a, user: "{me.pw_uid}:{me.pw_gid}"}}
          uid: {{command: b, user: "{me.pw_uid}"}}
          named: {{command: c, user: {me.pw_name}}}
        """,
    )
    result = export(config)
    assert container(result, "ids")["securityContext"] == {"runAsUser": me.pw_uid, "runAsGroup": me.pw_gid}
    assert container(result, "uid")["securityContext"] == {"runAsUser": me.pw_uid}
    assert "securityContext" not in container(result, "named")
    assert any(w.startswith(f"named: user: {me.pw_name} is a name") for w in result.warnings)


# ----- probes, stopping, restarts --------------------------------------------------------


def test_health_checks_become_readiness_and_liveness_probes(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          web:
            command: serve
            port: 8080
            healthcheck: {http: "http://127.0.0.1:${PORT}/health?deep=1", interval: 5s, timeout: 3s,
                          retries: 4, start_period: 20s}
          tls:
            command: serve
            port: 8443
            healthcheck: {http: "https://localhost:${PORT}/"}
          cache:
            command: cache
            port: 6379
            healthcheck: {tcp: "127.0.0.1:${PORT}", interval: 500ms, timeout: 1.5s}
          db:
            command: db
            port: 5432
            restart: "no"
            healthcheck: {exec: "pg_isready -p ${PORT}"}
          listed:
            command: work
            healthcheck: {test: [CMD, check, --port, "${DB_PORT}"]}
          watcher:
            command: watch
            healthcheck: {tcp: "127.0.0.1:${DB_PORT}"}
        """,
    )
    result = export(config)
    web = container(result, "web")
    assert web["readinessProbe"] == {
        "httpGet": {"path": "/health?deep=1", "port": 8080, "scheme": "HTTP"},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 4,
    }
    assert web["livenessProbe"] == {**web["readinessProbe"], "initialDelaySeconds": 20}
    assert container(result, "tls")["readinessProbe"]["httpGet"] == {
        "path": "/",
        "port": 8443,
        "scheme": "HTTPS",
    }
    cache = container(result, "cache")["readinessProbe"]
    assert cache == {
        "tcpSocket": {"port": 6379},
        "periodSeconds": 1,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    assert any(
        w.startswith("cache: healthcheck: interval 0.5s and timeout 1.5s are rounded up")
        for w in result.warnings
    )
    db = container(result, "db")
    assert db["readinessProbe"]["exec"] == {"command": ["/bin/sh", "-c", "pg_isready -p 5432"]}
    assert "livenessProbe" not in db  # `restart: no`: stackvisor leaves an unhealthy service running
    assert container(result, "listed")["readinessProbe"]["exec"] == {"command": ["check", "--port", "5432"]}
    assert "readinessProbe" not in container(result, "watcher")  # the kubelet would probe its own pod
    assert (
        "watcher: healthcheck: it probes db's port 5432, which is not in its pod: no probe" in result.warnings
    )


def test_a_log_health_check_has_no_probe(tmp_path: Path) -> None:
    config = stack(tmp_path, "services: {worker: {command: work, healthcheck: {log: ready}}}")
    result = export(config)
    assert "readinessProbe" not in container(result, "worker")
    assert any(w.startswith("worker: healthcheck: log") for w in result.warnings)


def test_the_grace_period_is_the_stop_timeout(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        settings: {stop_timeout: 7s}
        services:
          quick: {command: a, stop_timeout: 1500ms}
          slow: {command: b, stop_grace_period: 1m30s, stop_signal: SIGINT}
          usual: {command: c}
        """,
    )
    result = export(config)
    grace = {
        name: pod_of(result, name)["terminationGracePeriodSeconds"] for name in ("quick", "slow", "usual")
    }
    assert grace == {"quick": 2, "slow": 90, "usual": 7}
    assert any(w.startswith("slow: stop_signal: SIGINT") for w in result.warnings)


def test_one_shots_are_jobs_that_retry_as_their_restart_says(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          once: {command: a, restart: "no"}
          setup: {command: b, max_restarts: 3}
          forever: {command: c, max_restarts: 0}
          again: {command: d, restart: always}
          api:
            command: serve
            depends_on:
              setup: {condition: service_completed_successfully}
              forever: {condition: service_completed_successfully}
              again: {condition: service_completed_successfully}
        """,
    )
    result = export(config)
    jobs = {d["metadata"]["name"]: d for d in documents(result) if d["kind"] == "Job"}
    assert sorted(jobs) == ["again", "forever", "once", "setup"]
    limits = {name: job["spec"]["backoffLimit"] for name, job in jobs.items()}
    assert limits == {"once": 0, "setup": 3, "forever": kubernetes.UNLIMITED, "again": kubernetes.UNLIMITED}
    policies = {name: job["spec"]["template"]["spec"]["restartPolicy"] for name, job in jobs.items()}
    assert policies == {"once": "Never", "setup": "OnFailure", "forever": "OnFailure", "again": "OnFailure"}
    assert "selector" not in jobs["once"]["spec"]  # Kubernetes makes a Job's own
    assert find(result, "Deployment", "api")
    assert any(w.startswith("again: restart: always: a Job is not run again") for w in result.warnings)


def test_dependencies_with_a_port_are_waited_for_the_others_are_said(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          db: {command: db, port: 5432, healthcheck: {tcp: "${PORT}"}}
          queue: {command: queue}
          setup: {command: setup}
          api:
            command: serve
            depends_on:
              db: {condition: service_healthy, restart: true}
              queue: {condition: service_started}
              setup: {condition: service_completed_successfully}
        """,
    )
    result = export(config)
    assert pod_of(result, "api")["initContainers"] == [
        {
            "name": "wait-db",
            "image": WAIT_IMAGE,
            "command": ["sh", "-c", "until nc -z -w 2 db 5432; do sleep 1; done"],
        }
    ]
    said = [w for w in result.warnings if w.startswith("api: depends_on")]
    assert said == [
        "api: depends_on: db restart: true: it is not restarted when db is",
        "api: depends_on: queue (service_started) is not waited for (it has no port to wait on): "
        "it may fail and be restarted until queue is done",
        "api: depends_on: setup (service_completed_successfully) is not waited for "
        "(a pod cannot wait for a Job to complete): it may fail and be restarted until setup is done",
    ]


# ----- what does not carry over, the files -----------------------------------------------


def test_what_kubernetes_cannot_do_is_a_comment_on_its_document_and_a_warning(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          api:
            command: serve
            port: 8000
            alternative_ports: [8001]
            conflict_strategy: aggressive
            socket: inherit
            start: on_demand
            idle_stop: 5m
            lease: 1m
            watch: ["*.py"]
            backoff: {initial: 1s}
            max_restarts: 2
          worker: {command: work, healthcheck: {log: ready}}
        """,
    )
    result = export(config)
    expected = [
        "port conflicts are not resolved",
        "conflict_strategy: aggressive",
        "watch:",
        "idle_stop:",
        "lease:",
        "socket: inherit",
        "start: on_demand",
        "backoff:",
        "max_restarts: a Deployment never gives up",
    ]
    api = [w for w in result.warnings if w.startswith("api: ")]
    assert len(api) == len(expected)
    assert all(any(w.startswith(f"api: {what}") for w in api) for what in expected)
    assert result.warnings[-1] == base.STACK_WIDE
    text = next(iter(result.files.values()))
    head, *chunks = text.split("---\n")
    assert head == f"# not carried over: {base.STACK_WIDE}\n"
    api_chunk = next(c for c in chunks if "name: api" in c and "kind: Deployment" in c)
    assert api_chunk.startswith("".join(f"# not carried over: {w}\n" for w in api) + "apiVersion: apps/v1\n")
    worker_chunk = next(c for c in chunks if "name: worker" in c)
    assert worker_chunk.startswith("# not carried over: worker: healthcheck: log")


def test_a_file_per_object_carries_its_own_comments(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          api: {command: serve, port: 8000, watch: ["*.py"]}
          setup: {command: setup, restart: "no"}
        """,
    )
    result = export(config, one_file=False)
    assert sorted(result.files) == ["api-deployment.yaml", "api-service.yaml", "setup-job.yaml"]
    deployment = result.files["api-deployment.yaml"]
    assert deployment.startswith("# not carried over: api: watch:")
    assert f"# not carried over: {base.STACK_WIDE}\napiVersion: apps/v1\n" in deployment
    assert result.files["api-service.yaml"].startswith("apiVersion: v1\nkind: Service\n")
    assert result.files["setup-job.yaml"].startswith(
        f"# not carried over: {base.STACK_WIDE}\napiVersion: batch/v1\n"
    )
    assert documents(result) == documents(export(config))  # the same objects, in the same order


def test_the_output_is_the_same_every_time_and_plain_yaml(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          db: {command: db, port: 5432, healthcheck: {tcp: "${PORT}"}}
          api: {command: "serve --db 127.0.0.1:${DB_PORT}", port: 8000, depends_on: [db],
                env: {B: "2", A: "1"}, healthcheck: {http: "http://127.0.0.1:${PORT}/"}}
        """,
    )
    first = export(config)
    assert export(config) == first
    assert export(stack(tmp_path, (tmp_path / "services.yaml").read_text())) == first
    text = next(iter(first.files.values()))
    assert "&id" not in text and "*id" not in text  # no anchors for the repeated labels
    assert "\n        - serve --db" not in text  # a command is not folded over lines
    assert [item["name"] for item in container(first, "api")["env"]][:2] == ["B", "A"]


def test_only_the_chosen_services_and_what_they_need(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          db: {command: db, port: 5432}
          api: {command: serve, port: 8000, depends_on: [db]}
          web: {command: web, port: 3000}
        """,
    )
    result = kubernetes.export(base.plan(config, ["api"], image="app:1"))
    assert {d["metadata"]["name"] for d in documents(result)} == {"db", "api"}


# ----- Kubernetes' schemas ---------------------------------------------------------------


def validate(result: base.Exported) -> int:
    """Every document against every version's strict schema; the count validated."""
    checker = pytest.importorskip("kubernetes_validate")
    count = 0
    for document in documents(result):
        assert DNS_LABEL.fullmatch(document["metadata"]["name"])
        for version in KUBERNETES_VERSIONS:
            checker.validate(document, version, strict=True)
        count += 1
    return count


def test_the_validation_refuses_what_kubernetes_would(tmp_path: Path) -> None:
    checker = pytest.importorskip("kubernetes_validate")
    config = stack(tmp_path, "services: {api: {command: serve, port: 8000}}")
    deployment = find(export(config), "Deployment", "api")
    deployment["spec"]["template"]["spec"]["containers"][0]["startCommand"] = ["x"]
    with pytest.raises(checker.ValidationError):
        checker.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def shipped() -> list[Path]:
    return [REPO / "services.yaml", *sorted(REPO.glob("examples/*/services.yaml"))]


@pytest.mark.parametrize("path", shipped(), ids=lambda p: str(p.relative_to(REPO)))
@pytest.mark.parametrize("one_file", [True, False], ids=["one-file", "per-object"])
def test_the_shipped_stacks_are_valid_kubernetes(path: Path, one_file: bool, tmp_path: Path) -> None:
    # As tests/test_examples.py runs them: the servers as this user, a cluster folder of ours.
    uid = str(os.getuid())
    environ = {**os.environ, "PG_USER": uid, "REDIS_USER": uid, "PGDATA": str(tmp_path / "pgdata")}
    config = load_config(path, environ)
    result = export(config, image="python:3.12-slim", one_file=one_file)
    ports = base.plan(config).ports
    objects = len(config.services) + sum(1 for name in config.services if ports[name] is not None)
    assert validate(result) == objects
    assert base.STACK_WIDE in result.warnings


def test_every_field_at_once_is_valid_kubernetes(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    config = stack(
        tmp_path,
        f"""
        name: everything
        settings: {{stop_timeout: 2500ms}}
        services:
          setup: {{command: [migrate, --all], restart: "no", user: "{os.getuid()}"}}
          db:
            command: db --port ${{PORT}}
            port: 5432
            socket: inherit
            healthcheck: {{exec: [check], interval: 200ms, timeout: 100ms, start_period: 2.5s}}
          api:
            command: "serve && echo $(date)"
            port: auto
            type: rest-api
            working_dir: srv
            labels: {{team: a}}
            depends_on:
              setup: {{condition: service_completed_successfully}}
              db: {{condition: service_healthy}}
            env: {{URL: "postgres://127.0.0.1:${{DB_PORT}}/x", EMPTY: ""}}
            healthcheck: {{http: "http://127.0.0.1:${{PORT}}/health"}}
          worker: {{command: work, restart: always, healthcheck: {{tcp: "db:5432"}}, depends_on: [api]}}
        """,
    )
    result = export(config, images={"db": "postgres:17"})
    assert validate(result) == 6  # a Job, three Deployments, two Services
    assert container(result, "worker")["readinessProbe"]["tcpSocket"] == {"port": 5432, "host": "db"}


def test_a_schedule_is_said_not_silently_dropped(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("services:\n  backup: {command: /bin/true, schedule: {interval: 1h}}\n")
    result = kubernetes.export(base.plan(load_config(path, environ={}), image="app:1"))
    assert any(w.startswith("backup: schedule:") for w in result.warnings)
