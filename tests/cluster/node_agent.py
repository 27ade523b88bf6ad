"""The node agent: what the kubelet does for the test control plane's nodes, as far as
FlexTrain's tests need it.

It keeps the registered nodes Ready (their Leases in `kube-node-lease`) and takes every
pod the real kube-scheduler binds to one of them:

- **status mode** (default): the pod becomes Running and Ready with a running container.
  It ends when a test asks: `finish(pod, exit_code)` or the pod annotation
  `agent.flextrain.dev/exit-code: "<code>"` (Succeeded on 0, else Failed, the exit code
  in the container's terminated state, as the Job controller's podFailurePolicy reads it).
- **exec mode**: the pod's container command runs as a local process, with the
  environment resolved from the pod spec (`value` with `$(VAR)` references,
  `secretKeyRef`, `configMapKeyRef`, `fieldRef` including the Job controller's
  `JOB_COMPLETION_INDEX` annotation, `resourceFieldRef`) and `.venv/bin` first on PATH
  (the image's PATH). A namespace labelled `agent.flextrain.dev/mode: exec` runs in exec
  mode while the rest stay in status mode. Its exit code becomes the container's terminated state;
  `restartPolicy` Always / OnFailure restart it (restartCount counts). Readiness is the
  process being alive.

The mapping from a pod to a process on this machine (no container runtime here):

| pod | process |
|---|---|
| pod IP | a distinct loopback address 127.1.x.y per pod (status.podIP) |
| Service `<svc>.<ns>.svc` | `tests/cluster/cluster_dns.py`: gRPC resolves it through `dns://127.0.0.1:<port>/...` to the IPs of the Service's ready pods (the agent selects them as the EndpointSlice controller would: the API server refuses loopback addresses in EndpointSlices) |
| listening ports | the host's: pods share the machine's network, so two pods listening on one port collide (run one job's aggregator at a time) |
| volumes | each mount's path is a directory under the agent's work dir (emptyDir, PVC: per pod / per claim; hostPath: the host path; Secret: per pod, holding its `items` only, as the kubelet writes them); env values and arguments that start with a mount path are rewritten to that directory |
| working directory, logs | `<work>/pods/<ns>_<pod>/`, `stdout.log` there |

The control plane has no storage provisioner: the agent plays a local-path one. Every
PersistentVolumeClaim that is pending and names no volume (outside the namespaces a test
put in `unprovisioned`) gets a `hostPath` PersistentVolume
of its size, class and access modes, reserved for it (`claimRef`); the real PV controller
binds the two, and the kube-scheduler then places the pod that mounts the claim. The
claim's directory is `<work>/claims/<ns>/<claim>` (as a PVC mount is mapped above), so
it outlives the pods that use it.

A pod deleted by a controller (suspend, scale-down, garbage collection) is stopped
(SIGTERM, then SIGKILL after its grace period, at most 10 s), its status set terminal,
and removed with grace period 0, as the kubelet confirms a deletion.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.cluster import nodes
from tests.cluster.cluster_dns import DnsServer
from tests.tools import REPO

log = logging.getLogger("node-agent")

EXIT_ANNOTATION = "agent.flextrain.dev/exit-code"
MODE_LABEL = "agent.flextrain.dev/mode"
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Pod:
    """What the agent knows of one pod it runs."""

    def __init__(self, pod: dict[str, Any], ip: str) -> None:
        self.uid: str = pod["metadata"]["uid"]
        self.name: str = pod["metadata"]["name"]
        self.namespace: str = pod["metadata"]["namespace"]
        self.ip = ip
        self.started = _now()
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.finished: int | None = None  # exit code once terminal
        self.deleting = False
        self.lock = threading.Lock()


class NodeAgent:
    """Kubelet stand-in for `node_names`; `start()` begins, `stop()` ends everything."""

    def __init__(
        self,
        api: client.ApiClient,
        node_names: Iterable[str],
        workdir: Path,
        *,
        mode: str = "status",
        lease_interval: float = 5.0,
    ) -> None:
        assert mode in ("status", "exec"), mode
        self.api = api
        self.core = client.CoreV1Api(api)
        self.nodes = set(node_names)
        self.workdir = workdir
        self.mode = mode
        self.lease_interval = lease_interval
        self.pods: dict[str, _Pod] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._ips = (f"127.1.{i // 250}.{i % 250 + 2}" for i in itertools.count())
        self._threads: list[threading.Thread] = []
        self.dns = DnsServer(self._lookup)
        self._paused_nodes: set[str] = set()
        #: Namespaces whose claims get no volume (as on a cluster without a provisioner).
        self.unprovisioned: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> NodeAgent:
        self.dns.start()
        for target, name in ((self._leases, "leases"), (self._watch_pods, "pods"), (self._provision, "volumes")):
            thread = threading.Thread(target=target, name=f"node-agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            pods = list(self.pods.values())
        for p in pods:
            self._kill(p, grace=2.0)
        for thread in self._threads:
            thread.join(10)
        self.dns.stop()

    def pause_node(self, node: str) -> None:
        """Stop renewing `node`'s lease, as when its kubelet dies."""
        self._paused_nodes.add(node)

    def resume_node(self, node: str) -> None:
        """Renew the lease and post Ready again, as a restarted kubelet does (the node
        lifecycle controller set Ready=Unknown and the unreachable taints meanwhile)."""
        self._paused_nodes.discard(node)
        nodes.renew_lease(self.api, node)
        nodes.post_ready(self.api, node)

    # -- what tests ask -------------------------------------------------------------------

    def finish(self, namespace: str, name: str, exit_code: int) -> None:
        """End a pod's container with `exit_code` (status mode; in exec mode it signals)."""
        pod = self.core.read_namespaced_pod(name, namespace)
        state = self.pods.get(pod.metadata.uid)
        if state is None:
            raise LookupError(f"pod {namespace}/{name} is not running on an agent node")
        self._terminate(state, self.api.sanitize_for_serialization(pod), exit_code)

    # -- leases ---------------------------------------------------------------------------

    def _leases(self) -> None:
        while not self._stop.wait(self.lease_interval):
            for node in sorted(self.nodes - self._paused_nodes):
                try:
                    nodes.renew_lease(self.api, node)
                except Exception as exc:  # the API server may be stopping
                    log.debug("lease %s: %s", node, exc)

    # -- volumes --------------------------------------------------------------------------

    def _provision(self) -> None:
        """A hostPath PersistentVolume for each pending claim that names none (a watch)."""
        made: set[str] = set()
        while not self._stop.is_set():
            try:
                stream = watch.Watch().stream(
                    self.core.list_persistent_volume_claim_for_all_namespaces, timeout_seconds=30
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    claim = event["object"]
                    pending = not claim.spec.volume_name and claim.status.phase == "Pending"
                    if claim.metadata.namespace in self.unprovisioned:
                        continue
                    if event["type"] in ("ADDED", "MODIFIED") and pending and claim.metadata.uid not in made:
                        self._provide(claim)
                        made.add(claim.metadata.uid)
            except Exception as exc:  # the API server may be stopping
                if not self._stop.is_set():
                    log.debug("claim watch: %s", exc)
                    time.sleep(0.5)

    def _provide(self, claim: client.V1PersistentVolumeClaim) -> None:
        try:
            self.core.create_persistent_volume(self._volume_for(claim))
        except ApiException as exc:
            if exc.status != 409:
                log.debug("volume for %s/%s: %s", claim.metadata.namespace, claim.metadata.name, exc)

    def _volume_for(self, claim: client.V1PersistentVolumeClaim) -> dict[str, Any]:
        ns, name = claim.metadata.namespace, claim.metadata.name
        path = self.workdir / "claims" / ns / name
        path.mkdir(parents=True, exist_ok=True)
        spec: dict[str, Any] = {
            "capacity": {"storage": claim.spec.resources.requests["storage"]},
            "accessModes": claim.spec.access_modes,
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {"namespace": ns, "name": name, "uid": claim.metadata.uid},
            "storageClassName": claim.spec.storage_class_name or "",
        }
        return {"metadata": {"name": f"pv-{claim.metadata.uid}"}, "spec": spec}

    # -- pods -----------------------------------------------------------------------------

    def _watch_pods(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listed = self.api.sanitize_for_serialization(self.core.list_pod_for_all_namespaces())
                    version = listed["metadata"]["resourceVersion"]
                    for pod in listed["items"]:
                        self._handle(pod)
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=version,
                    timeout_seconds=30,
                    allow_watch_bookmarks=True,
                    _preload_content=False,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    obj = event["raw_object"]
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] == "ERROR":
                        version = ""  # expired: list again
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._handle(obj)
                    elif event["type"] == "DELETED":
                        self._forget(obj)
            except ApiException as exc:
                if exc.status == 410:
                    version = ""
                elif not self._stop.is_set():
                    time.sleep(0.5)
            except Exception as exc:
                if not self._stop.is_set():
                    log.debug("pod watch: %s", exc)
                    time.sleep(0.5)

    def _handle(self, pod: dict[str, Any]) -> None:
        spec, meta = pod.get("spec", {}), pod["metadata"]
        if spec.get("nodeName") not in self.nodes:
            return
        uid = meta["uid"]
        with self.lock:
            state = self.pods.get(uid)
            if state is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    if meta.get("deletionTimestamp"):
                        self._confirm_deletion(meta["namespace"], meta["name"], uid)
                    return
                state = self.pods[uid] = _Pod(pod, next(self._ips))
                fresh = True
            else:
                fresh = False
        try:
            if meta.get("deletionTimestamp"):
                self._delete(state, pod)
            elif fresh:
                self._run(state, pod)
            elif state.finished is None and EXIT_ANNOTATION in (meta.get("annotations") or {}):
                self._terminate(state, pod, int(meta["annotations"][EXIT_ANNOTATION]))
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s/%s: %s", state.namespace, state.name, exc)

    def _forget(self, pod: dict[str, Any]) -> None:
        with self.lock:
            state = self.pods.pop(pod["metadata"]["uid"], None)
        if state is not None:
            self._kill(state, grace=0.5)

    def _exec(self, namespace: str) -> bool:
        if self.mode == "exec":
            return True
        labels = self.core.read_namespace(namespace).metadata.labels or {}
        return labels.get(MODE_LABEL) == "exec"

    def _run(self, state: _Pod, pod: dict[str, Any]) -> None:
        if self._exec(state.namespace):
            self._spawn(state, pod)
        self._post_status(state, pod, running=True)

    def _delete(self, state: _Pod, pod: dict[str, Any]) -> None:
        if state.deleting:
            return
        state.deleting = True
        grace = min(float(pod["metadata"].get("deletionGracePeriodSeconds") or 0), 10.0)
        self._kill(state, grace=grace)
        if state.finished is None:
            state.finished = 137
            with contextlib.suppress(ApiException):
                self._post_status(state, pod, running=False, exit_code=137, reason="Killed")
        self._confirm_deletion(state.namespace, state.name, state.uid)

    def _confirm_deletion(self, namespace: str, name: str, uid: str) -> None:
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                name,
                namespace,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)),
            )

    def _terminate(self, state: _Pod, pod: dict[str, Any], exit_code: int) -> None:
        if state.proc is not None:
            self._kill(state, grace=5.0)
            return  # the process monitor posts the exit code
        state.finished = exit_code
        self._post_status(state, pod, running=False, exit_code=exit_code)

    # -- status ---------------------------------------------------------------------------

    def _post_status(
        self,
        state: _Pod,
        pod: dict[str, Any],
        *,
        running: bool,
        exit_code: int = 0,
        reason: str | None = None,
    ) -> None:
        containers = pod["spec"]["containers"]
        restart_policy = pod["spec"].get("restartPolicy", "Always")
        stamp = _now()
        if running:
            cstate: dict[str, Any] = {"running": {"startedAt": state.started}}
            phase = "Running"
        else:
            cstate = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                    "startedAt": state.started,
                    "finishedAt": stamp,
                }
            }
            phase = "Succeeded" if exit_code == 0 and restart_policy != "Always" else "Failed"
        ready = "True" if running else "False"
        status = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": state.ip,
            "podIPs": [{"ip": state.ip}],
            "startTime": state.started,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": state.started},
                {"type": "Initialized", "status": "True", "lastTransitionTime": state.started},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": stamp},
                {"type": "Ready", "status": ready, "lastTransitionTime": stamp},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": state.started},
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "containerID": f"agent://{state.uid}/{c['name']}",
                    "ready": running,
                    "started": running,
                    "restartCount": state.restarts,
                    "state": cstate,
                }
                for c in containers
            ],
        }
        # A strategic merge keeps conditions other components own (DisruptionTarget).
        self.core.patch_namespaced_pod_status(state.name, state.namespace, {"status": status})

    # -- exec mode ------------------------------------------------------------------------

    def _pod_dir(self, state: _Pod) -> Path:
        path = self.workdir / "pods" / f"{state.namespace}_{state.name}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _mounts(self, state: _Pod, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        """mountPath -> local directory."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        out = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})
            if "hostPath" in volume:
                local = Path(volume["hostPath"]["path"])
            elif "persistentVolumeClaim" in volume:
                local = self.workdir / "claims" / state.namespace / volume["persistentVolumeClaim"]["claimName"]
            elif "secret" in volume:
                local = self._secret_volume(state, mount["name"], volume["secret"])
            else:
                local = self._pod_dir(state) / "volumes" / mount["name"]
            if mount.get("subPath"):
                local = local / mount["subPath"]
            local.mkdir(parents=True, exist_ok=True)
            out[mount["mountPath"]] = str(local)
        return out

    def _secret_volume(self, state: _Pod, name: str, source: dict[str, Any]) -> Path:
        """A Secret volume as the kubelet writes it: its `items` (every key when there are
        none), each under its path, read-only; a missing Secret or key fails the pod's start
        unless the volume is optional."""
        import base64

        local = self._pod_dir(state) / "volumes" / name
        local.mkdir(parents=True, exist_ok=True)
        try:
            data = self.core.read_namespaced_secret(source["secretName"], state.namespace).data or {}
        except ApiException:
            if source.get("optional"):
                return local
            raise
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                raise KeyError(f"secret {state.namespace}/{source['secretName']} has no key {item['key']}")
            path = local / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.write_bytes(base64.b64decode(data[item["key"]]))
            path.chmod(item.get("mode", source.get("defaultMode", 0o644)))
        return local

    def _map_path(self, value: str, mounts: dict[str, str]) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return mounts[mount_path] + value[len(mount_path) :]
        return value

    def _env(self, state: _Pod, pod: dict[str, Any], container: dict[str, Any], mounts: dict[str, str]) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item or "valueFrom" not in item:
                value = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), item.get("value", ""))
            else:
                value = self._value_from(state, pod, container, item["valueFrom"])
                if value is None:
                    continue
            env[name] = self._map_path(value, mounts)
        base = {
            "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOSTNAME": state.name,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        return {**base, **env}

    def _value_from(self, state: _Pod, pod: dict[str, Any], container: dict[str, Any], source: dict[str, Any]) -> str | None:
        ns = state.namespace
        if ref := source.get("secretKeyRef"):
            try:
                secret = self.core.read_namespaced_secret(ref["name"], ns)
            except ApiException:
                if ref.get("optional"):
                    return None
                raise
            import base64

            data = secret.data or {}
            if ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise KeyError(f"secret {ns}/{ref['name']} has no key {ref['key']}")
            return base64.b64decode(data[ref["key"]]).decode()
        if ref := source.get("configMapKeyRef"):
            cm = self.core.read_namespaced_config_map(ref["name"], ns)
            return (cm.data or {}).get(ref["key"])
        if ref := source.get("fieldRef"):
            return self._field(state, pod, ref["fieldPath"])
        if ref := source.get("resourceFieldRef"):
            resources = container.get("resources") or {}
            kind, _, resource = ref["resource"].partition(".")
            return str((resources.get(kind) or {}).get(resource, "0"))
        return None

    def _field(self, state: _Pod, pod: dict[str, Any], path: str) -> str:
        meta = pod["metadata"]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        return {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": state.ip,
            "status.hostIP": "127.0.0.1",
        }.get(path, "")

    def _spawn(self, state: _Pod, pod: dict[str, Any]) -> None:
        containers = pod["spec"]["containers"]
        if len(containers) != 1:
            raise NotImplementedError("the node agent runs pods of one container")
        container = containers[0]
        mounts = self._mounts(state, pod, container)
        env = self._env(state, pod, container, mounts)

        def expand(arg: str) -> str:
            return self._map_path(_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), arg), mounts)

        argv = [expand(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        if argv and "/" not in argv[0]:
            argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
        workdir = self._pod_dir(state)
        with (workdir / "stdout.log").open("ab") as out:
            state.proc = subprocess.Popen(
                argv, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        threading.Thread(
            target=self._monitor, args=(state, pod), name=f"pod-{state.name}", daemon=True
        ).start()

    def _monitor(self, state: _Pod, pod: dict[str, Any]) -> None:
        proc = state.proc
        assert proc is not None
        code = proc.wait()
        if code < 0:
            code = 128 - code  # killed by a signal, as container runtimes report it
        if self._stop.is_set() or state.deleting:
            return
        policy = pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            state.restarts += 1
            with contextlib.suppress(ApiException):
                self._post_status(state, pod, running=False, exit_code=code)
            time.sleep(min(2.0 * state.restarts, 10.0))
            if not (self._stop.is_set() or state.deleting):
                state.started = _now()
                self._spawn(state, pod)
                with contextlib.suppress(ApiException):
                    self._post_status(state, pod, running=True)
            return
        state.finished = code
        with contextlib.suppress(ApiException):
            self._post_status(state, pod, running=False, exit_code=code)

    def _kill(self, state: _Pod, *, grace: float) -> None:
        proc = state.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(max(grace, 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    # -- cluster DNS ----------------------------------------------------------------------

    def _lookup(self, service: str, namespace: str) -> list[str]:
        """The Service's ready endpoints, chosen as the EndpointSlice controller does
        (selector, Ready, not terminating). The slices themselves cannot be read: the API
        server refuses loopback addresses in EndpointSlices, so none are published."""
        try:
            svc = self.core.read_namespaced_service(service, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise LookupError(service) from exc
            raise
        selector = ",".join(f"{k}={v}" for k, v in sorted((svc.spec.selector or {}).items()))
        if not selector:
            return []
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return sorted(
            p.status.pod_ip
            for p in pods
            if p.status.pod_ip
            and p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        )
