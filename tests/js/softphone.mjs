// A browser softphone's SIP stack (SIP.js 0.21) run under Node, driven line by line by tests/integration/test_websocket_sipjs.py.
//
// Usage: node softphone.mjs SERVER_URL USER PASSWORD DOMAIN
// It registers (digest) over the WebSocket SERVER_URL (ws:// or wss://; for wss the test's CA comes
// in NODE_EXTRA_CA_CERTS), answers every incoming call, and reads commands on stdin:
//   call URI   invite URI          hangup   end the call in progress          quit   unregister and exit
// It writes JSON lines on stdout: {"event": ...} as things happen (registered, established, terminated,
// failed) and {"trace": "sent"|"received", "message": ...} for every WebSocket message, so the test can
// read the signalling as it crossed the wire.
//
// Only the media engine is replaced: Node has no RTCPeerConnection, so the session description handler
// offers and answers a fixed PCMU SDP. Every SIP message is SIP.js's own, over a real WebSocket (the
// `ws` package, standing in for the browser's).

import { createInterface } from "node:readline";
import WebSocket from "ws";
import { Inviter, Registerer, RegistererState, SessionState, UserAgent } from "sip.js";

const [server, user, password, domain] = process.argv.slice(2);

function emit(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

// The browser's WebSocket, as SIP.js's transport uses it (new WebSocket(url, "sip")), with every message traced.
class TracingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    this.addEventListener("message", (event) => emit({ trace: "received", message: String(event.data) }));
  }

  send(data, ...rest) {
    emit({ trace: "sent", message: String(data) });
    return super.send(data, ...rest);
  }
}
globalThis.WebSocket = TracingWebSocket;

const SDP = [
  "v=0", "o=sipjs 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
  "m=audio 9 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "a=sendrecv", "",
].join("\r\n");

// The media engine's stand-in: what a browser's would offer and answer for an audio call, fixed.
class FixedSdp {
  constructor() { this.remote = undefined; }
  close() {}
  getDescription() { return Promise.resolve({ body: SDP, contentType: "application/sdp" }); }
  hasDescription(contentType) { return contentType === "application/sdp"; }
  setDescription(sdp) { this.remote = sdp; return Promise.resolve(); }
  sendDtmf() { return false; }
}

let session;  // the call in progress

function follow(candidate, direction) {
  session = candidate;
  candidate.stateChange.addListener((state) => {
    if (state === SessionState.Established) emit({ event: "established", direction });
    if (state === SessionState.Terminated) emit({ event: "terminated", direction });
  });
}

const userAgent = new UserAgent({
  uri: UserAgent.makeURI(`sip:${user}@${domain}`),
  authorizationUsername: user,
  authorizationPassword: password,
  transportOptions: { server },
  sessionDescriptionHandlerFactory: () => new FixedSdp(),
  logLevel: "error",
  delegate: {
    onInvite(invitation) {
      follow(invitation, "in");
      invitation.accept().catch((error) => emit({ event: "failed", what: "accept", error: String(error) }));
    },
  },
});

const registerer = new Registerer(userAgent, { expires: 300 });
registerer.stateChange.addListener((state) => {
  if (state === RegistererState.Registered) emit({ event: "registered" });
  if (state === RegistererState.Unregistered) emit({ event: "unregistered" });
});

async function command(line) {
  const [verb, argument] = line.trim().split(/\s+/, 2);
  if (verb === "call") {
    const inviter = new Inviter(userAgent, UserAgent.makeURI(argument));
    follow(inviter, "out");
    await inviter.invite({
      requestDelegate: { onReject: (response) => emit({ event: "failed", what: "invite", status: response.message.statusCode }) },
    });
  } else if (verb === "hangup") {
    await session.bye();
  } else if (verb === "quit") {
    await registerer.unregister();
    setTimeout(async () => { await userAgent.stop(); process.exit(0); }, 500);
  }
}

await userAgent.start();
await registerer.register({
  requestDelegate: { onReject: (response) => emit({ event: "failed", what: "register", status: response.message.statusCode }) },
});
createInterface({ input: process.stdin }).on("line", (line) => {
  command(line).catch((error) => emit({ event: "failed", what: line, error: String(error) }));
});
