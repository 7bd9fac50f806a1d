"""`stackvisor export kubernetes`: the stack as Kubernetes manifests, one multi-document
`<stack>.yaml` or a file per object.

Each service becomes a Deployment (one replica, replaced by `Recreate`: like stackvisor,
one copy at a time), or a Job when it runs to completion: `restart: no`, or a service
that another waits for with `service_completed_successfully`. A service with a port also
gets a Service of the same name that selects its pod. The pod is `kubernetes_pod`'s.

Names: every object is named after its service, made a DNS label (lower case, `-` for
what a label cannot hold, at most 63 characters, a number added when two come out
alike); the stack is a namespace's worth of objects (`kubectl apply -n NAME`), its
name in `app.kubernetes.io/part-of`. The service's `labels` become annotations.

Images: a service's own (`x-kubernetes: {image: ...}` in the file, which the command line
reads into `target.images`: the loaded stack drops `x-` fields; `images` adds to them),
else `target.image` (`--image`); services with neither are named in one `ExportError`.

What Kubernetes cannot express is a `# not carried over: ...` comment at the top of the
document it concerns (the stack's own at the top of the file) and a warning. Pure: the
files are returned as text, in a fixed order, the same for the same stack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import yaml

from stackvisor.config.kinds import Condition, RestartPolicy
from stackvisor.export.base import STACK_WIDE, Exported, ExportError, Target, not_carried
from stackvisor.export.kubernetes_pod import pod

# A Job's `backoffLimit` for "never gives up": the largest its int32 holds.
UNLIMITED = 2**31 - 1
_LABEL_MAX = 63
_ANNOTATION_KEY = re.compile(
    r"(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)


def export(target: Target, *, one_file: bool = True, images: Mapping[str, str] | None = None) -> Exported:
    """The manifests of `target`'s services and what did not carry over."""
    chosen = _images(target, images or {})
    names = object_names(target.services)
    stack = kube_name(target.name)
    jobs = one_shots(target)
    documents: list[tuple[str, list[str], dict[str, Any]]] = []
    warnings: list[str] = []
    for name in target.services:
        job = name in jobs
        built = pod(target, name, names, chosen[name], job=job)
        lost = not_carried(target, name) + [
            f"{name}: {what}" for what in built.lost + _lost(target, name, job)
        ]
        labels = {"app.kubernetes.io/name": names[name], "app.kubernetes.io/part-of": stack}
        metadata: dict[str, Any] = {"name": names[name], "labels": labels}
        notes = _annotations(target.service(name).labels, lost, name)
        if notes:
            metadata["annotations"] = notes
        template = {"metadata": {"labels": labels}, "spec": built.spec}
        workload = _job(target, name, metadata, template) if job else _deployment(metadata, template)
        documents.append((f"{names[name]}-{workload['kind'].lower()}.yaml", lost, workload))
        if (port := target.ports.get(name)) is not None:
            service = _service(names[name], labels, port)
            documents.append((f"{names[name]}-service.yaml", [], service))
        warnings += lost
    warnings.append(STACK_WIDE)
    return Exported(_files(stack, documents, one_file), warnings)


def kube_name(text: str) -> str:
    """`text` as a DNS label (RFC 1035: what a Service's name must be): `My_API` -> `my-api`."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"s-{name}".rstrip("-")
    return name[:_LABEL_MAX].rstrip("-")


def object_names(services: tuple[str, ...]) -> dict[str, str]:
    """Each service's object name: its `kube_name`, with `-2`, `-3`, ... added to a name
    taken by an earlier service (in `services`' order)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for service in services:
        base = kube_name(service)
        name, number = base, 1
        while name in taken:
            number += 1
            suffix = f"-{number}"
            name = base[: _LABEL_MAX - len(suffix)].rstrip("-") + suffix
        taken.add(name)
        names[service] = name
    return names


def one_shots(target: Target) -> set[str]:
    """The services that run to completion: `restart: no`, or waited for with
    `service_completed_successfully`."""
    awaited = {
        dep
        for name in target.services
        for dep, edge in target.service(name).depends_on.items()
        if edge.condition is Condition.COMPLETED
    }
    return {n for n in target.services if n in awaited or target.service(n).restart is RestartPolicy.NO}


def _images(target: Target, images: Mapping[str, str]) -> dict[str, str]:
    unknown = sorted(set(images) - set(target.config.services))
    if unknown:
        raise ExportError(f"an image is given for {', '.join(unknown)}: the stack has no such service")
    if images:
        target = replace(target, images={**target.images, **images})
    target.require_images()
    return {name: image for name in target.services if (image := target.image_of(name))}


def _lost(target: Target, name: str, job: bool) -> list[str]:
    """What Kubernetes does not do of the service's start and restarts."""
    svc = target.service(name)
    written = svc.model_fields_set
    lost = []
    if svc.socket == "inherit":
        lost.append("socket: inherit: no listening socket is handed over; the service must bind its port")
    if svc.start == "on_demand":
        lost.append("start: on_demand: it starts at once, not at the first connection")
    if svc.schedule is not None:
        lost.append("schedule: it runs at once, not on its timetable (a CronJob would carry it)")
    if "backoff" in written:
        lost.append("backoff: Kubernetes waits 10s before a restart, doubling up to 5 minutes")
    if not job and "max_restarts" in written:
        lost.append("max_restarts: a Deployment never gives up")
    if job and svc.restart in (RestartPolicy.ALWAYS, RestartPolicy.UNLESS_STOPPED):
        lost.append(f"restart: {svc.restart}: a Job is not run again once it has succeeded")
    return lost


def _annotations(labels: dict[str, str], lost: list[str], name: str) -> dict[str, str]:
    """The service's `labels` (notes for tools) as annotations: keys Kubernetes refuses
    are left out, and said so."""
    notes = {key: value for key, value in labels.items() if _ANNOTATION_KEY.fullmatch(key)}
    refused = [key for key in labels if key not in notes]
    if refused:
        lost.append(f"{name}: labels {', '.join(refused)}: not a valid annotation key in Kubernetes")
    return notes


def _deployment(metadata: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": template["metadata"]["labels"]},
            "template": template,
        },
    }


def _job(target: Target, name: str, metadata: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """A Job that retries as the service's `restart` says: `no` never, `on-failure` up to
    `max_restarts` times (0: without end), `always` and `unless-stopped` without end."""
    svc = target.service(name)
    if svc.restart is RestartPolicy.NO:
        limit = 0
    elif svc.restart is RestartPolicy.ON_FAILURE and svc.max_restarts > 0:
        limit = svc.max_restarts
    else:
        limit = UNLIMITED
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {"backoffLimit": limit, "template": template},
    }


def _service(name: str, labels: dict[str, str], port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": labels,
            "ports": [{"port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def _comments(lost: list[str]) -> str:
    # One line each: a line break in a warning (a label's key may hold one) would end the comment.
    return "".join(f"# not carried over: {' '.join(what.splitlines())}\n" for what in lost)


def _unshared(value: Any) -> Any:
    """A copy in which no dict or list appears twice: YAML would write a shared one as an
    anchor and aliases (`&id001`, `*id001`), which people and some tools read badly."""
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def _yaml(lost: list[str], document: dict[str, Any]) -> str:
    # Wide lines: a command is easier to read (and diff) on one line than folded.
    text = yaml.safe_dump(_unshared(document), sort_keys=False, width=1 << 16, allow_unicode=True)
    return _comments(lost) + text


def _files(
    stack: str, documents: list[tuple[str, list[str], dict[str, Any]]], one_file: bool
) -> dict[str, str]:
    """One `<stack>.yaml` with the stack's own comments first, or a file per object with
    them at the top of each Deployment and Job."""
    if one_file:
        parts = [_comments([STACK_WIDE])]
        parts += ["---\n" + _yaml(lost, document) for _, lost, document in documents]
        return {f"{stack}.yaml": "".join(parts)}
    return {
        path: _yaml(lost + ([STACK_WIDE] if document["kind"] != "Service" else []), document)
        for path, lost, document in documents
    }
