"""The `sipreg` command line: `sipreg serve` runs a registrar from manifests on one machine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from registrar.app import RegistrarServer, ServeConfig
from registrar.manifests import ManifestError, load_catalog
from registrar.store.etcd_session import parse_endpoints


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
        help="location service: memory (default) or etcd://HOST:PORT[,HOST:PORT...] shared by replicas",
    )
    serve.add_argument(
        "--expires-spread",
        type=_percent,
        default=10,
        help="take up to this %% off each granted expiry at random, so refreshes spread out (default 10; 0: exact)",
    )
    serve.add_argument("--node", help="this registrar's name among replicas (default: host name and SIP port)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--sip-port", type=_port, default=5060, help="UDP and TCP port (default 5060)")
    serve.add_argument("--tls-port", type=_port, default=5061, help="TLS port (default 5061; 0 disables TLS)")
    serve.add_argument("--http-port", type=_port, default=8080, help="health/metrics/API port (default 8080; 0 disables)")
    serve.add_argument("--tls-cert", help="PEM certificate chain for TLS (default: self-signed)")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert")
    serve.add_argument("--nonce-secret", help="secret for digest nonces, shared by replicas (default: random)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def _percent(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 50:
        raise argparse.ArgumentTypeError(f"not a percentage from 0 to 50: {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("sipreg serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.store != "memory":
        try:
            parse_endpoints(args.store)
        except ValueError as error:
            print(f"sipreg serve: {error}", file=sys.stderr)
            return 2
    manifests = args.manifests or ("manifests" if args.store == "memory" else None)
    try:
        catalog = load_catalog(manifests) if manifests else None
    except ManifestError as error:
        print(f"sipreg serve: {error}", file=sys.stderr)
        return 2
    config = ServeConfig(
        catalog=catalog,
        store=args.store,
        host=args.host,
        sip_port=args.sip_port,
        tls_port=args.tls_port or None,
        http_port=args.http_port or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        node=args.node,
        expires_spread=args.expires_spread / 100,
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
        print(f"sipreg serve: {error}", file=sys.stderr)
        return 1


async def _serve(config: ServeConfig) -> int:
    server = RegistrarServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        await stop.wait()
        logging.getLogger("sipreg").info("sipreg: stopping")
    finally:
        await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
