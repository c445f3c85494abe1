"""A Kubernetes API for operator tests: kmock's KubernetesEmulator, mended, on its own thread.

kmock 0.8's KubernetesEmulator is a dict store over HTTP: no uid/resourceVersion/
generation, no subresources, 500 for a failed JSON-patch `test`, no PUT, no
generateName, no selectors, no garbage collection, watches that ignore
resourceVersion. kopf depends on several of those (its finalizer patches are
JSON patches guarded by a `test` on metadata.resourceVersion and expect 422;
it starts watching from the version of its list), so `ClusterEmulator` takes
over the write path and list/watch, and keeps kmock's object store, event
buses, discovery, error rendering and reaction DSL. The conftest docstring
lists what is emulated and what is not.

`EmulatorThread` runs it on a thread with its own event loop, so that the
test thread may block (the sync `kubernetes` client, `KopfRunner.__exit__`
joining kopf's thread) while the API keeps answering.

This module depends on kmock internals (kmock._internal.apps/parsing/rendering,
the emulator's _objects/_buses/_lock/_resources/_requests): kmock is pinned.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import itertools
import re
import secrets
import threading
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import apps, parsing, rendering

T = TypeVar("T")

CRD_RESOURCE = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
STANDARD_VERBS = frozenset({"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"})
# Server-owned metadata: a client's body never changes these.
SERVER_METADATA = ("uid", "creationTimestamp", "generation", "resourceVersion",
                   "deletionTimestamp", "deletionGracePeriodSeconds", "name", "namespace")
# Kubernetes drops these when empty (omitempty); kopf counts on it (KNOWN_INCONSISTENCIES).
OMIT_EMPTY_METADATA = ("finalizers", "labels", "annotations", "ownerReferences")
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as in apiserver's generateName


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8's URL parser, but /api/v1/namespaces[/NAME[/status|/finalize]] are Namespaces.

    kmock reads `namespaces/X` as the namespace prefix of a namespaced URL everywhere, so
    it fails (500) on listing or creating Namespaces and misreads reading one.
    """
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
    ):
        return parsing.ParsedPath(group="", version="v1", plural="namespaces", namespace=None,
                                  name=parts[3] if len(parts) > 3 else None,
                                  subresource=parts[4] if len(parts) > 4 else None)
    return _kmock_parse_path(path)


_kmock_parse_path = parsing.parse_path
parsing.parse_path = _parse_path  # rendering.Request._parse looks it up in the module at each request


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, null deletes, everything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_schema(value: Any, schema: Mapping[str, Any] | None, *, root: bool = False) -> Any:
    """Structural-schema defaulting and pruning, as the apiserver does for a CRD.

    Unknown fields are dropped unless `x-kubernetes-preserve-unknown-fields` or
    `additionalProperties` keeps them; `default`s fill absent properties.
    No validation (types, enums, required, patterns): a wrong value is stored.
    """
    if not schema:
        return value
    if isinstance(value, list):
        items = schema.get("items")
        return [apply_schema(item, items) for item in value] if isinstance(items, Mapping) else value
    if not isinstance(value, dict):
        return value
    properties: Mapping[str, Any] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    kept = {"apiVersion", "kind", "metadata"} if root or schema.get("x-kubernetes-embedded-resource") else set()
    result: dict[str, Any] = {}
    for name, sub in properties.items():
        if name not in value and isinstance(sub, Mapping) and "default" in sub:
            result[name] = copy.deepcopy(sub["default"])
    for name, item in value.items():
        if name in kept:
            result[name] = item
        elif name in properties:
            result[name] = apply_schema(item, properties[name])
        elif isinstance(additional, Mapping):
            result[name] = apply_schema(item, additional)
        elif additional is True or preserve:
            result[name] = item
    return result


_REQUIREMENT = re.compile(
    r"\s*(?P<neg>!)?(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [part for part in [*parts, current] if part.strip()]


def selector_matches(selector: str, values: Mapping[str, Any]) -> bool:
    """A label or field selector (`a=b,c!=d,e,!f,g in (x,y)`) against flat `values`."""
    for requirement in _split_selector(selector):
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise _error(400, "BadRequest", f"unable to parse requirement: {requirement!r}")
        key, present = match["key"], match["key"] in values
        actual = values.get(key)
        if match["neg"]:
            ok = not present
        elif match["op"] in ("=", "=="):
            ok = present and str(actual) == match["value"]
        elif match["op"] == "!=":
            ok = not present or str(actual) != match["value"]
        elif match["setop"]:
            options = {item.strip() for item in match["values"].split(",") if item.strip()}
            ok = (present and str(actual) in options) if match["setop"] == "in" else not (present and str(actual) in options)
        else:
            ok = present
        if not ok:
            return False
    return True


def _fields_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted paths of an object's scalar fields, for field selectors (metadata.name, spec.x, ...)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        elif not isinstance(value, list):
            flat[prefix] = value

    walk("", obj)
    return flat


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with the API server semantics an operator relies on."""

    _versions: Iterable[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_version: int = attrs.field(default=0, init=False)
    _schemas: dict[kmock.resource, Mapping[str, Any]] = attrs.field(factory=dict, init=False)
    # Every watch event ever sent, by resourceVersion: a watch from a version replays what followed it.
    _history: list[tuple[int, kmock.resource, dict[str, Any]]] = attrs.field(factory=list, init=False)

    # --- the write path -------------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> Any:
        original = request
        if request.resource is not None and request.method == kmock.method.PUT and request.name:
            request = attrs.evolve(request, action=kmock.action.UPDATE)  # kmock maps PUT to nothing
        if request.resource is not None and request.action in (
            kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE
        ):
            async with self._lock:
                request = await self._write(request)
        if request is not original:  # kmock's reactions see only the recorded requests, by identity
            index = next(i for i, recorded in enumerate(self._requests) if recorded is original)
            self._requests[index] = request
        # Bypass KubernetesEmulator._handle (its naive writes are replaced by _write): kmock's
        # dispatch still serves user reactions first, then the fallbacks (_serve_create, ...),
        # which answer with the state _write left behind.
        return await apps.RawHandler._handle(self, request)

    async def _write(self, request: rendering.Request) -> rendering.Request:
        resource = request.resource
        assert resource is not None
        if resource not in self._resources:
            raise kmock.KubernetesResourceNotFoundError()
        info = self._resources[resource]
        if request.action == kmock.action.CREATE:
            body = await self._create(request, info)
            await self._collect_garbage()  # a child of an owner already gone goes at once
            return attrs.evolve(request, data=body)  # _serve_create finds the object by the final name
        key = (resource, request.namespace if info.namespaced else None, request.name)
        obj = self._objects._objects.get(key)  # noqa: SLF001 -- keys here are parsed already
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        if request.action == kmock.action.UPDATE:
            await self._update(request, info, key, obj)
        else:
            await self._delete(key, obj, request.data if isinstance(request.data, Mapping) else {})
        await self._collect_garbage()
        return request

    async def _create(self, request: rendering.Request, info: kmock.ResourceInfo) -> dict[str, Any]:
        resource = request.resource
        assert resource is not None
        if request.subresource:
            raise _error(405, "MethodNotAllowed", f"the emulator does not serve POST on {request.subresource}")
        if not isinstance(request.data, Mapping):
            raise _error(415, "UnsupportedMediaType", "the emulator takes JSON bodies only")
        body = copy.deepcopy(dict(request.data))
        meta = body.get("metadata")
        meta = body["metadata"] = dict(meta) if isinstance(meta, Mapping) else {}
        if info.namespaced:
            if request.namespace and meta.get("namespace") and meta["namespace"] != request.namespace:
                raise _error(400, "BadRequest", "the namespace of the object does not match the request's")
            namespace = request.namespace or meta.get("namespace")
            if not namespace:
                raise _error(400, "BadRequest", "a namespaced object needs a namespace")
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _error(422, "Invalid", "metadata.name or metadata.generateName is required")
            suffix = "".join(secrets.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        key = (resource, namespace, meta["name"])
        existing = self._objects._objects.get(key)  # noqa: SLF001
        if existing is not None and not existing.deleted:
            raise _error(409, "AlreadyExists", f"{resource.plural} {meta['name']!r} already exists")
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1,
                    resourceVersion=self._next_version())
        body.setdefault("apiVersion", f"{resource.group}/{resource.version}" if resource.group else resource.version)
        body.setdefault("kind", info.kind)
        if "status" in info.subresources:
            body.pop("status", None)  # the apiserver ignores status on create (status subresource)
        if resource == CRD_RESOURCE:
            self.register_crd(body)
            body["status"] = {"conditions": [{"type": "Established", "status": "True"}],
                              "acceptedNames": body.get("spec", {}).get("names", {})}
        if resource == kmock.resource("", "v1", "namespaces"):
            body["status"] = {"phase": "Active"}
        body = self._normalise(resource, body)
        if existing is not None:
            existing.create(body)
        else:
            self._objects[key] = body
        await self._emit(resource, "ADDED", body)
        return body

    async def _update(self, request: rendering.Request, info: kmock.ResourceInfo,
                      key: tuple[kmock.resource, str | None, str], obj: kmock.Object) -> None:
        resource = key[0]
        has_status = "status" in info.subresources
        if request.subresource not in (None, "status") or (request.subresource == "status" and not has_status):
            raise _error(404, "NotFound", f"the emulator does not serve the subresource {request.subresource!r}")
        old = copy.deepcopy(obj.raw)
        old_version = old.get("metadata", {}).get("resourceVersion")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if request.method == kmock.method.PUT:
            if not isinstance(request.data, Mapping):
                raise _error(415, "UnsupportedMediaType", "the emulator takes JSON bodies only")
            new = copy.deepcopy(dict(request.data))
            sent_version = (new.get("metadata") or {}).get("resourceVersion")
            if not sent_version:
                raise _error(422, "Invalid", "metadata.resourceVersion: must be specified for an update")
            if sent_version != old_version:
                raise _conflict(resource, key[2])
        elif content_type == "application/json-patch+json":
            if not isinstance(request.data, list):
                raise _error(400, "BadRequest", "a JSON patch is a list of operations")
            try:
                new = jsonpatch.apply_patch(old, request.data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise _error(422, "Invalid", f"the JSON patch cannot be applied: {e}") from e
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                              "application/json", ""):
            # NB: a strategic merge patch is applied as a plain merge patch: lists are replaced
            # whole (no merge keys, no $patch/$retainKeys directives).
            if not isinstance(request.data, Mapping):
                raise _error(400, "BadRequest", "a merge patch is a JSON object")
            sent_version = (request.data.get("metadata") or {}).get("resourceVersion")
            if sent_version is not None and sent_version != old_version:
                raise _conflict(resource, key[2])
            new = merge_patch(old, request.data)
        else:
            raise _error(415, "UnsupportedMediaType", f"the emulator does not apply {content_type!r} patches")
        if not isinstance(new, dict) or not isinstance(new.get("metadata", {}), Mapping):
            raise _error(422, "Invalid", "the patched object is not an object")

        # The status subresource: /status changes only status; the main resource never changes it.
        if has_status:
            if request.subresource == "status":
                status = new.get("status")
                new = copy.deepcopy(old)
                new.pop("status", None)
                if status is not None:
                    new["status"] = status
            else:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
        new_meta = new["metadata"] = dict(new.get("metadata") or {})
        old_meta = old.get("metadata", {})
        for field in SERVER_METADATA:
            new_meta.pop(field, None)
            if field in old_meta:
                new_meta[field] = old_meta[field]
        for field in ("apiVersion", "kind"):
            if field in old:
                new[field] = old[field]
        if old_meta.get("deletionTimestamp"):
            added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise _error(422, "Invalid", f"no new finalizers can be added while deleting: {sorted(added)}")
        new = self._normalise(resource, new)
        if new == old:
            return  # a no-op write: no new resourceVersion and no watch event, as in Kubernetes
        essence = lambda body: {k: v for k, v in body.items() if k not in ("metadata", "status")}  # noqa: E731
        if essence(new) != essence(old) or (not has_status and new.get("status") != old.get("status")):
            new["metadata"]["generation"] = int(old_meta.get("generation", 0)) + 1
        new["metadata"]["resourceVersion"] = self._next_version()
        obj.history.append(new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            obj.delete()  # the last finalizer is gone: the object is gone
            await self._emit(resource, "DELETED", new)
        else:
            await self._emit(resource, "MODIFIED", new)

    async def _delete(self, key: tuple[kmock.resource, str | None, str], obj: kmock.Object,
                      options: Mapping[str, Any]) -> None:
        resource = key[0]
        body = copy.deepcopy(obj.raw)
        meta = body["metadata"]
        preconditions = options.get("preconditions") or {}
        for field in ("uid", "resourceVersion"):
            if preconditions.get(field) and preconditions[field] != meta.get(field):
                raise _conflict(resource, key[2])
        if meta.get("deletionTimestamp"):
            return  # already being deleted: waiting for its finalizers
        meta["resourceVersion"] = self._next_version()
        if meta.get("finalizers"):
            meta["deletionTimestamp"] = _now()
            meta["deletionGracePeriodSeconds"] = 0
            obj.history.append(body)
            await self._emit(resource, "MODIFIED", body)
        else:
            obj.history.append(body)
            obj.delete()
            await self._emit(resource, "DELETED", body)

    async def _collect_garbage(self) -> None:
        """Background cascading deletion: an object whose owners (by uid) are all gone is deleted."""
        while True:
            live = [(key, obj) for key, obj in self._objects.items() if not obj.deleted]
            uids = {obj.raw.get("metadata", {}).get("uid") for _, obj in live}
            orphans = [
                (key, obj) for key, obj in live
                if (owners := obj.raw.get("metadata", {}).get("ownerReferences"))
                and not obj.raw["metadata"].get("deletionTimestamp")
                and all(owner.get("uid") not in uids for owner in owners)
            ]
            if not orphans:
                return
            for key, obj in orphans:
                await self._delete(key, obj, {})

    def _normalise(self, resource: kmock.resource, body: dict[str, Any]) -> dict[str, Any]:
        if resource.plural == "secrets" and not resource.group and "stringData" in body:
            # stringData is write-only: the apiserver folds it into data (base64), stringData winning.
            data = body.setdefault("data", {}) or {}
            for key, value in (body.pop("stringData") or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            body["data"] = data
        schema = self._schemas.get(resource)
        if schema is not None:
            body = apply_schema(body, schema, root=True)
        meta = body["metadata"]
        for field in OMIT_EMPTY_METADATA:
            if field in meta and not meta[field]:
                del meta[field]
        return body

    def _next_version(self) -> str:
        self._last_version = next(self._versions)  # type: ignore[call-overload]
        return str(self._last_version)

    async def _emit(self, resource: kmock.resource, event_type: str, body: Mapping[str, Any]) -> None:
        event = {"type": event_type, "object": copy.deepcopy(dict(body))}
        self._history.append((int(body["metadata"]["resourceVersion"]), resource, event))
        await self._buses[resource].put(event)

    # --- the read path --------------------------------------------------------------------------

    def _selected(self, request: rendering.Request) -> list[dict[str, Any]]:
        return [copy.deepcopy(obj.raw) for (resource, _, _), obj in self._objects.items()
                if resource == request.resource and not obj.deleted and self._watched(request, obj.raw)]

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.resource not in self._resources:
            raise kmock.KubernetesResourceNotFoundError()
        info = self._resources[request.resource]
        async with self._lock:
            items = self._selected(request)
            version = str(self._last_version)
        resource = request.resource
        return {
            "apiVersion": f"{resource.group}/{resource.version}" if resource.group else resource.version,
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    async def _serve_watch(self, request: rendering.Request) -> Any:
        """A watch as the apiserver serves it, with no gap and no stale duplicate.

        Without resourceVersion (or with "0"): every matching object as ADDED, then live events.
        With resourceVersion=N (as kopf and client-go send after a list): the events after N,
        then live events. kmock streams the full state on every watch, and subscribes after
        taking it; kopf then re-processes a stale copy of an object it has just patched (its
        JSON patch gets 422) and waits for an event that never comes.
        """
        yield b""
        assert request.resource is not None
        bus = self._buses[request.resource]
        since = request.params.get("resourceVersion") or "0"
        if not since.isdigit():
            raise _error(400, "BadRequest", f"invalid resourceVersion {since!r}")
        async with self._lock:  # nothing is written between the catch-up and the subscription
            marker = await bus.mark()
            if int(since) == 0:
                catch_up = [{"type": "ADDED", "object": body} for body in self._selected(request)]
            else:
                catch_up = [copy.deepcopy(event) for version, resource, event in self._history
                            if version > int(since) and resource == request.resource
                            and self._watched(request, event["object"])]
        try:
            for event in catch_up:
                yield event
            async for event in bus.stream(since=marker):
                if self._watched(request, event["object"]):
                    yield event
        finally:
            await bus.unmark(marker)

    def _watched(self, request: rendering.Request, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata", {})
        labels = request.params.get("labelSelector") or ""
        fields = request.params.get("fieldSelector") or ""
        return ((request.namespace is None or meta.get("namespace") == request.namespace)
                and (request.name is None or meta.get("name") == request.name)
                and (not labels or selector_matches(labels, meta.get("labels") or {}))
                and (not fields or selector_matches(fields, _fields_of(body))))

    # --- custom resources -----------------------------------------------------------------------

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve the custom resource of an apiextensions.k8s.io/v1 CRD: discovery, schema, subresources."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            resource = kmock.resource(spec["group"], version["name"], names["plural"])
            self._resources[resource] = kmock.ResourceInfo(
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()),
                shortnames=names.get("shortNames", ()),
                categories=names.get("categories", ()),
                subresources=(version.get("subresources") or {}).keys(),
                verbs=STANDARD_VERBS,
            )
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if schema:
                self._schemas[resource] = schema


def _conflict(resource: kmock.resource, name: str) -> kmock.KubernetesError:
    return _error(409, "Conflict", f"Operation cannot be fulfilled on {resource.plural} {name!r}: "
                                   "the object has been modified; please apply your changes to the "
                                   "latest version and try again")


class EmulatorThread:
    """A ClusterEmulator serving on 127.0.0.1:<free port> from a thread with its own event loop."""

    def __init__(self, *, bundled: bool = True) -> None:
        self._bundled = bundled
        self._thread = threading.Thread(target=self._run, name="kmock-emulator", daemon=True)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.emulator: ClusterEmulator | None = None
        self.port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the Kubernetes emulator did not start")
        if self._failure is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from self._failure
        return self

    def stop(self, timeout: float = 10) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the Kubernetes emulator did not stop")
        if self._failure is not None:
            raise RuntimeError("the Kubernetes emulator failed") from self._failure

    def call(self, fn: Callable[[ClusterEmulator], T], timeout: float = 10) -> T:
        """Run `fn(emulator)` on the emulator's loop (its state is not thread-safe) and return the result."""
        async def on_loop() -> T:
            assert self.emulator is not None
            result = fn(self.emulator)
            return await result if isinstance(result, Awaitable) else result  # type: ignore[return-value]

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(on_loop(), self._loop).result(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # noqa: BLE001 -- reported to the test thread by start()/stop()
            self._failure = e
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with ClusterEmulator() as emulator, kmock.Server(emulator) as server:
            if self._bundled:
                with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated call
                    warnings.simplefilter("ignore", DeprecationWarning)
                    emulator.resources.load_bundled()
            self.emulator = emulator
            self.port = server.port
            self._ready.set()
            await self._stopping.wait()
