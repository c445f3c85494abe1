"""The `sipreg` command line: `serve` (a registrar on one machine), `registrar` (one pod), `operator` (the cluster),
`trace` (a connection's last SIP messages)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import aiohttp

from registrar import hep, trace_cli
from registrar.app import DEFAULT_HTTP_HOSTS, RegistrarServer, ServeConfig
from registrar.http import check_api_token
from registrar.manifests import ManifestError, load_catalog
from registrar.sip.source import TRANSPORTS
from registrar.store.etcd import DEFAULT_CACHED_AORS, MIN_CACHED_AORS
from registrar.store.etcd_session import EtcdTls, parse_endpoints


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipreg", description="A SIP registrar cluster that Kubernetes runs for you.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a registrar from SipDomain/SipConnection manifests, no cluster needed")
    serve.add_argument(
        "--manifests",
        help="directory or file of manifests (default: manifests/ with the memory store; with etcd, what etcd holds)",
    )
    serve.add_argument(
        "--store",
        default="memory",
        help="location service: memory (default) or etcd://HOST:PORT[,HOST:PORT...] shared by replicas "
        "(TLS to etcd: $SIPREG_ETCD_CA, $SIPREG_ETCD_CERT, $SIPREG_ETCD_KEY name PEM files)",
    )
    _registrar_options(serve, host="127.0.0.1")
    # What the operator's pods run: the domains and connections come from etcd, where the
    # operator publishes them; settings that differ per pod come from the environment.
    pod = commands.add_parser("registrar", help="run one registrar replica of a cluster (what operator pods run)")
    pod.add_argument(
        "--store",
        default=os.environ.get("SIPREG_ETCD"),
        help="etcd://HOST:PORT[,HOST:PORT...] (default: $SIPREG_ETCD; TLS: $SIPREG_ETCD_CA/_CERT/_KEY name PEM files)",
    )
    pod.add_argument(
        "--domain",
        action="append",
        dest="domains",
        help="serve only this domain of those in etcd (repeatable; default: all of them)",
    )
    pod.add_argument(
        "--advertise",
        default=os.environ.get("POD_IP"),
        help="the address other replicas reach this one at (default: $POD_IP, else --host)",
    )
    _registrar_options(
        pod, host="0.0.0.0", node=os.environ.get("POD_NAME"), http_hint="; the operator's pods add their pod IP"
    )
    operator = commands.add_parser("operator", help="run the Kubernetes operator (SipDomain/SipConnection -> pods, etcd)")
    operator.add_argument(
        "--etcd",
        help="etcd://HOST:PORT[,HOST:PORT...] the registrars share (default: $SIPREG_ETCD; TLS as for registrar)",
    )
    operator.add_argument(
        "--namespace", action="append", dest="namespaces", help="watch only this namespace (repeatable; default: all)"
    )
    operator.add_argument("--health-port", type=_port, default=8080, help="liveness endpoint port (default 8080)")
    operator.add_argument(
        "--metrics-port",
        type=_port,
        default=os.environ.get("SIPREG_METRICS_PORT", "9090"),
        help="Prometheus /metrics port (default $SIPREG_METRICS_PORT, else 9090; 0 disables)",
    )
    operator.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    trace_cli.add_parser(commands)
    return parser


def _registrar_options(
    parser: argparse.ArgumentParser, host: str, node: str | None = None, http_hint: str = ""
) -> None:
    parser.add_argument(
        "--expires-spread",
        type=_percent,
        default=10,
        help="take up to this %% off each granted expiry at random, so refreshes spread out (default 10; 0: exact)",
    )
    parser.add_argument(
        "--cached-aors",
        type=_cached_aors,
        default=DEFAULT_CACHED_AORS,
        metavar="N",
        help="with etcd: keep the connections and the bindings of at most N AORs each in memory, read the rest "
        f"on demand (default {DEFAULT_CACHED_AORS:,}; about 1 KiB each)",
    )
    parser.add_argument(
        "--node", default=node, help="this registrar's name among replicas (default: host name and SIP port)"
    )
    parser.add_argument(
        "--public-host",
        default=os.environ.get("SIPREG_PUBLIC_HOST"),
        help="the address UAs reach us at, put in Via and Record-Route of proxied calls "
        "(default: $SIPREG_PUBLIC_HOST, else the advertised address, else --host)",
    )
    parser.add_argument(
        "--public-port",
        action="append",
        type=_public_port,
        default=[],
        metavar="TRANSPORT=PORT",
        help="the port UAs reach us at for udp, tcp, tls, ws or wss, when a load balancer maps it onto ours (repeatable)",
    )
    parser.add_argument("--host", default=host, help=f"address SIP listens on (default {host})")
    parser.add_argument("--sip-port", type=_port, default=5060, help="UDP and TCP port (default 5060)")
    parser.add_argument("--tls-port", type=_port, default=5061, help="TLS port (default 5061; 0 disables TLS)")
    parser.add_argument(
        "--ws-port", type=_port, default=5066, help="SIP over WebSocket (ws://) port (default 5066; 0 disables it)"
    )
    parser.add_argument(
        "--wss-port", type=_port, default=7443,
        help="SIP over secure WebSocket (wss://) port (default 7443; 0 disables it)",
    )
    parser.add_argument(
        "--http-host",
        action="append",
        dest="http_hosts",
        help="address HTTP (health, metrics, bindings API) listens on, repeatable "
        f"(default 127.0.0.1, whatever --host is{http_hint})",
    )
    parser.add_argument(
        "--http-port", type=_port, default=8080, help="health/metrics/API port (default 8080; 0 disables)"
    )
    parser.add_argument(
        "--api-token-file",
        help="file holding the bearer token of the bindings API /api/v1/bindings (or $SIPREG_API_TOKEN); "
        "without either the API is off (404)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain for TLS (default: self-signed)")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument("--wss-cert", help="PEM certificate chain for wss (default: --tls-cert's)")
    parser.add_argument("--wss-key", help="PEM private key for --wss-cert")
    parser.add_argument(
        "--nonce-secret",
        default=os.environ.get("SIPREG_NONCE_SECRET"),
        help="secret for digest nonces, shared by replicas (default: $SIPREG_NONCE_SECRET, else random)",
    )
    parser.add_argument(
        "--certificate-check-seconds", type=_seconds, default=10.0,
        help="how often --tls-cert/--wss-cert and their keys are read again: a renewed certificate is served "
        "to new connections without a restart (default 10; 0: never)",
    )
    parser.add_argument(
        "--drain-seconds", type=_seconds, default=0.0,
        help="on SIGTERM, seconds to go on serving, not ready, before new connections are refused "
        "(default 0; pods: 10, while the load balancer moves away)",
    )
    parser.add_argument(
        "--in-flight-seconds", type=_seconds, default=30.0,
        help="then, at most this long to answer the requests already in flight before stopping (default 30)",
    )
    parser.add_argument(
        "--hep", type=_hep_address, default=os.environ.get("SIPREG_HEP"), metavar="HOST:PORT",
        help="copy every SIP message to this HEP3 collector (Homer) over UDP (default: $SIPREG_HEP; none)",
    )
    parser.add_argument(
        "--hep-id", type=_hep_id, default=os.environ.get("SIPREG_HEP_ID", "1"), metavar="N",
        help="the capture agent id in every HEP packet (default: $SIPREG_HEP_ID, else 1)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _hep_address(text: str) -> tuple[str, int]:
    try:
        return hep.collector_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _hep_id(text: str) -> int:
    try:
        return hep.capture_id(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"not a number of seconds from 0 to 3600: {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def _public_port(text: str) -> tuple[str, int]:
    transport, equals, port = text.partition("=")
    if not equals or transport not in TRANSPORTS:
        raise argparse.ArgumentTypeError(f"not TRANSPORT=PORT with {', '.join(TRANSPORTS)}: {text!r}")
    return transport, _port(port)


def _percent(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 50:
        raise argparse.ArgumentTypeError(f"not a percentage from 0 to 50: {text!r}")
    return int(text)


def _cached_aors(text: str) -> int:
    if not text.isdigit() or int(text) < MIN_CACHED_AORS:
        raise argparse.ArgumentTypeError(f"not a number of AORs of at least {MIN_CACHED_AORS}: {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `sipreg trace` has no --log-level: it logs nothing worth a flag.
    level = getattr(args, "log_level", "warning")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    command = f"sipreg {args.command}"
    if args.command == "operator":
        return _operator(args, command)
    if args.command == "trace":
        return _trace(args, command)
    if bool(args.tls_cert) != bool(args.tls_key):
        print(f"{command}: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if bool(args.wss_cert) != bool(args.wss_key):
        print(f"{command}: --wss-cert and --wss-key go together", file=sys.stderr)
        return 2
    if args.command == "registrar" and not args.store:
        print(f"{command}: needs --store etcd://HOST:PORT (or $SIPREG_ETCD)", file=sys.stderr)
        return 2
    etcd_tls = None
    if args.store != "memory":
        try:
            etcd_tls = _etcd_settings(args.store, "--store (memory or etcd)")
        except ValueError as error:
            print(f"{command}: {error}", file=sys.stderr)
            return 2
    try:
        api_token = _api_token(args.api_token_file, os.environ.get("SIPREG_API_TOKEN"))
    except ValueError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    manifests = getattr(args, "manifests", None) or ("manifests" if args.store == "memory" else None)
    notes: list[str] = []
    try:
        catalog = load_catalog(manifests, notes) if manifests else None
    except ManifestError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    for note in notes if not args.tls_cert else ():
        logging.getLogger("sipreg").warning("%s: %s", command, note)
    config = ServeConfig(
        catalog=catalog,
        store=args.store,
        host=args.host,
        sip_port=args.sip_port,
        tls_port=args.tls_port or None,
        ws_port=args.ws_port or None,
        wss_port=args.wss_port or None,
        http_port=args.http_port or None,
        http_hosts=tuple(args.http_hosts or DEFAULT_HTTP_HOSTS),
        api_token=api_token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        wss_cert=args.wss_cert,
        wss_key=args.wss_key,
        node=args.node,
        expires_spread=args.expires_spread / 100,
        cached_aors=args.cached_aors,
        domains=frozenset(name.lower() for name in args.domains) if getattr(args, "domains", None) else None,
        advertise=getattr(args, "advertise", None),
        etcd_tls=etcd_tls,
        public_host=args.public_host,
        public_ports=dict(args.public_port),
        certificate_check_seconds=args.certificate_check_seconds,
        drain_seconds=args.drain_seconds,
        in_flight_seconds=args.in_flight_seconds,
        hep=args.hep,
        hep_id=args.hep_id,
    )
    if args.nonce_secret:
        config.nonce_secret = args.nonce_secret.encode()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    try:
        return runner(_serve(config))
    except (OSError, ValueError) as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 1


def _api_token(path: str | None, from_environment: str | None) -> str | None:
    """The bindings API's token from --api-token-file or $SIPREG_API_TOKEN; ValueError names the source and fault."""
    if path and from_environment:
        raise ValueError("--api-token-file and $SIPREG_API_TOKEN both give a token: give one")
    if from_environment:
        source, text = "$SIPREG_API_TOKEN", from_environment
    elif path:
        source = f"--api-token-file {path}"
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as error:
            raise ValueError(f"{source}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{source}: not UTF-8 text") from None
    else:
        return None
    try:
        return check_api_token(text)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _etcd_settings(url: str, option: str) -> EtcdTls | None:
    """Check an etcd URL and read the TLS files $SIPREG_ETCD_CA/_CERT/_KEY name; ValueError says what is wrong."""
    try:
        parse_endpoints(url)
    except ValueError as error:
        raise ValueError(f"{option}: {error}") from None
    return EtcdTls.from_environment(os.environ)


def _trace(args: argparse.Namespace, command: str) -> int:
    try:
        token = _api_token(args.api_token_file, os.environ.get("SIPREG_API_TOKEN"))
        tls = _etcd_settings(args.store, "--store") if args.store else None
    except ValueError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    if token is None:
        print(f"{command}: the registrars' API needs their bearer token: give --api-token-file or $SIPREG_API_TOKEN "
              "(the one sipreg serve or the chart was given)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(trace_cli.run(args, token, tls))
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError, LookupError, aiohttp.ClientError, asyncio.TimeoutError) as error:
        print(f"{command}: {error or type(error).__name__}", file=sys.stderr)
        return 1


def _operator(args: argparse.Namespace, command: str) -> int:
    if args.etcd:
        os.environ["SIPREG_ETCD"] = args.etcd
    # Imported here: `sipreg serve` on a laptop needs neither kopf nor the Kubernetes client.
    import kopf

    from sip_operator import handlers  # registers the handlers with kopf
    from sip_operator.children import PodSettings

    # kopf runs the handlers itself: the environment is how a setting reaches them.
    os.environ[handlers.METRICS_PORT_VARIABLE] = str(args.metrics_port)
    os.environ[handlers.HEALTH_PORT_VARIABLE] = str(args.health_port)

    try:
        pods = PodSettings.from_environment(os.environ)
    except ValueError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    try:
        # Checked here, where a bad value is one clear line and exit 2; kopf's start-up handler reads them for use.
        _etcd_settings(pods.etcd, "--etcd (or $SIPREG_ETCD)")
    except ValueError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    kopf.run(
        clusterwide=not args.namespaces,
        namespaces=args.namespaces or (),
        standalone=True,  # no kopf peering: replicas elect a leader with a Lease (sip_operator.leadership)
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
    )
    return 0


async def _serve(config: ServeConfig) -> int:
    """Serve until a signal: SIGTERM drains first (Kubernetes' way out), SIGINT (Ctrl-C) only answers
    what is in flight; a second signal stops at once."""
    server = RegistrarServer(config)
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    try:
        await server.start()
        first = await signals.get()
        drain = asyncio.create_task(
            server.drain(config.drain_seconds if first == signal.SIGTERM else 0.0, config.in_flight_seconds)
        )
        second = asyncio.create_task(signals.get())
        await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            logging.getLogger("sipreg").warning("sipreg: %s again: stopping now", second.result().name)
        for task in (drain, second):
            task.cancel()
        logging.getLogger("sipreg").info("sipreg: stopping")
    finally:
        await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
