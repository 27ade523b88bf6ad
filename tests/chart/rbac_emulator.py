"""RBAC as the API server enforces it, for the chart tests: the permissions a rendered
chart grants its ServiceAccount, and an emulator (tests/integration/kube_emulator.py)
that answers 403 to any request of the operator those permissions do not allow,
including what the OwnerReferencesPermissionEnforcement admission plugin checks: an
object created with an ownerReference that sets `blockOwnerDeletion: true` needs
`update` on the owner's `finalizers` subresource."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import enums, rendering

from tests.integration.kube_emulator import KubeEmulator

JSON = dict[str, Any]
#: (apiGroup, resource[/subresource], verb)
Permission = tuple[str, str, str]


def permissions(rules: Iterable[Mapping[str, Any]]) -> set[Permission]:
    """Every (group, resource, verb) a list of PolicyRules grants."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def _granted(perms: set[Permission], group: str, resource: str, verb: str) -> bool:
    return any(
        g in (group, "*") and r in (resource, "*") and v in (verb, "*") for g, r, v in perms
    )


@dataclasses.dataclass
class Grants:
    """What one ServiceAccount may do: cluster-wide (ClusterRoles bound by
    ClusterRoleBindings) and per namespace (Roles or ClusterRoles bound by RoleBindings)."""

    cluster: set[Permission]
    namespaced: dict[str, set[Permission]]

    @classmethod
    def of(cls, docs: Iterable[JSON], namespace: str, name: str) -> Grants:
        docs = list(docs)
        roles = {("ClusterRole", d["metadata"]["name"], None): d for d in docs
                 if d["kind"] == "ClusterRole"}
        roles.update({("Role", d["metadata"]["name"], d["metadata"]["namespace"]): d for d in docs
                      if d["kind"] == "Role"})
        grants = cls(set(), {})
        for binding in docs:
            if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
                continue
            if not any(s.get("kind") == "ServiceAccount" and s.get("name") == name
                       and s.get("namespace") == namespace for s in binding.get("subjects", [])):
                continue
            ref = binding["roleRef"]
            scope = binding["metadata"].get("namespace")
            role = roles.get((ref["kind"], ref["name"], scope if ref["kind"] == "Role" else None))
            assert role is not None, f"{binding['kind']} {binding['metadata']['name']} binds a missing {ref}"
            perms = permissions(role.get("rules", []))
            if binding["kind"] == "ClusterRoleBinding":
                grants.cluster |= perms
            else:
                grants.namespaced.setdefault(scope, set()).update(perms)
        return grants

    def allows(self, group: str, resource: str, verb: str, namespace: str | None) -> bool:
        if _granted(self.cluster, group, resource, verb):
            return True
        return namespace is not None and _granted(
            self.namespaced.get(namespace, set()), group, resource, verb
        )


def verb_of(request: rendering.Request) -> str:
    """The RBAC verb of a resource request, as kube-apiserver derives it."""
    action, method = request.action, str(request.method.value).upper()
    if action == enums.action.LIST:
        return "watch" if request.params.get("watch") in ("true", "1") else "list"
    if action == enums.action.WATCH:
        return "watch"
    if action == enums.action.FETCH:
        return "get"
    if action == enums.action.CREATE:
        return "create"
    if action == enums.action.UPDATE:
        return "patch" if method == "PATCH" else "update"
    if action == enums.action.DELETE:
        return "delete" if request.name else "deletecollection"
    raise ValueError(f"no RBAC verb for {method} {request.url}")


@attrs.define(kw_only=True)
class RbacEmulator(KubeEmulator):
    """Requests carrying `token` are authorised against `grants` (403 when denied); every
    authorised (group, resource, verb, namespace) is recorded in `used`. Requests without
    that token (the test playing the controllers) pass unchecked."""

    grants: Grants
    token: str = "operator-token"
    used: set[tuple[str, str, str, str | None]] = attrs.field(factory=set, init=False)
    denied: list[str] = attrs.field(factory=list, init=False)

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        return auth == f"Bearer {self.token}"

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock 0.8 cannot even parse /api/v1/namespaces, which kopf lists and watches when
        # it serves named namespaces. A refused list is recorded but answered anyway (with
        # `default`): kube-apiserver's 403 makes kopf retry for about a minute before it
        # falls back to the named namespaces, longer than a test may take. A watch is
        # refused (kopf retries it in the background and carries on).
        if raw_request.path.rstrip("/") == "/api/v1/namespaces" and self._authorised(raw_request.headers):
            await raw_request.read()
            verb = "watch" if raw_request.query.get("watch") in ("true", "1") else "list"
            if not self.grants.allows("", "namespaces", verb, None):
                self.denied.append(f"{verb} core/namespaces cluster-wide")
            if verb == "list":
                return aiohttp.web.json_response(data={
                    "apiVersion": "v1", "kind": "NamespaceList",
                    "metadata": {"resourceVersion": str(self._rv)},
                    "items": [{"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": "default"}}],
                })
            return aiohttp.web.json_response(status=403, data={
                "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403,
                "reason": "Forbidden", "message": "namespaces are not emulated",
            })
        return await super().__call__(raw_request)

    async def _handle(self, request: rendering.Request) -> Any:
        res = request.resource
        # Discovery (/api, /apis/GROUP/VERSION) names no resource; every account may read it.
        plural = res.plural if res is not None else None
        if isinstance(plural, str) and request.action is not None and self._authorised(request.headers):
            group = str(res.group or "") if res is not None else ""
            resource = plural + (f"/{request.subresource}" if request.subresource else "")
            verb = verb_of(request)
            if not self.grants.allows(group, resource, verb, request.namespace):
                where = f"in namespace {request.namespace}" if request.namespace else "cluster-wide"
                self.denied.append(f"{verb} {group or 'core'}/{resource} {where}")
                raise kmock.KubernetesError(
                    status=403, reason="Forbidden",
                    message=f'cannot {verb} resource "{resource}" in API group "{group}" {where}',
                )
            self.used.add((group, resource, verb, request.namespace))
            if request.action == enums.action.CREATE:
                self._enforce_owner_references(request, resource, group)
        return await super()._handle(request)

    def _enforce_owner_references(self, request: rendering.Request, resource: str, group: str) -> None:
        """OwnerReferencesPermissionEnforcement (plugin/pkg/admission/gc): setting
        blockOwnerDeletion on a new object needs update on the owner's finalizers."""
        data = request.data if isinstance(request.data, dict) else {}
        refs = (data.get("metadata") or {}).get("ownerReferences") or []
        for ref in refs:
            if not ref.get("blockOwnerDeletion"):
                continue
            owner_group = ref["apiVersion"].rpartition("/")[0]
            owners = [res.plural for res, info in self.resources.items()
                      if info.kind == ref["kind"] and str(res.group or "") == owner_group]
            for plural in owners:
                if not self.grants.allows(owner_group, f"{plural}/finalizers", "update", request.namespace):
                    where = f'in the namespace "{request.namespace}"' if request.namespace else "at the cluster scope"
                    self.denied.append(f"update {owner_group or 'core'}/{plural}/finalizers "
                                       f"(blockOwnerDeletion on a new {resource})")
                    name = (data.get("metadata") or {}).get("name", "")
                    raise kmock.KubernetesError(
                        status=403, reason="Forbidden",
                        message=f'{resource}{"." + group if group else ""} "{name}" is forbidden: '
                        "cannot set blockOwnerDeletion if an ownerReference refers to a resource "
                        "you can't set finalizers on: "
                        f'cannot update resource "{plural}/finalizers" in API group "{owner_group}" {where}',
                    )
