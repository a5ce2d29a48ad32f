// tether's share page: a browser client of the relay's protocol (docs/PROTOCOL.md), over
// /v1/share. /s/tether.js, loaded before it, sets TETHER (the protocol version). Control messages are JSON text; DATA and CREDIT are binary frames
// laid out as src/protocol/frames.ts defines them (its header comment is the reference).
//
// The link's token is in the URL's fragment, which the browser never sends to the relay;
// it goes as the hello's first message and is spent. The relay answers with a resume
// secret, kept in this tab's sessionStorage, so a reconnect (or a reload) comes back
// without the token.
//
// End to end (a link whose fragment also carries the page's key and the machine's): each
// stream starts with a Noise handshake with the agent (noise.js), and everything of it but
// credit goes sealed, so the relay routes what it cannot read or alter (docs/PROTOCOL.md).
/* global TETHER, Terminal, FitAddon, scrypt, TetherNoise */
"use strict";

(() => {
  const FRAME_DATA = 1;
  const FRAME_CREDIT = 2;
  const CH_STDIN = 0;
  const CH_STDOUT = 1;
  const DATA_HEADER = 16;
  const CREDIT_SIZE = 12;
  const TWO32 = 0x1_0000_0000;
  /** Output credit granted to the agent; handed back as xterm.js has drawn the bytes. */
  const WINDOW = 1024 * 1024;
  const MAX_DATA_PAYLOAD = 256 * 1024;
  const HEARTBEAT_MS = 2000;
  const DEAD_AFTER_MS = 6000;
  const RECONNECT_MIN_MS = 250;
  const RECONNECT_MAX_MS = 10_000;
  const CONNECT_TIMEOUT_MS = 10_000;

  const $ = (id) => document.getElementById(id);
  const enc = new TextEncoder();
  // ID.SECRET, then (end to end) the page's private key and the machine's public key.
  const fragment = decodeURIComponent(location.hash.slice(1)).split(".");
  const token = fragment.slice(0, 2).join(".");
  const keys = fragment.length === 4 && /^[A-Za-z0-9_-]{43}$/.test(fragment[2]) &&
      /^[A-Za-z0-9_-]{43}$/.test(fragment[3])
    ? {
      page: TetherNoise.fromBase64Url(fragment[2]),
      machine: TetherNoise.fromBase64Url(fragment[3]),
    }
    : undefined;
  const linkId = token.split(".")[0] || "link";
  const store = {
    get: (k) => sessionStorage.getItem(`tether:${linkId}:${k}`),
    set: (k, v) => sessionStorage.setItem(`tether:${linkId}:${k}`, v),
    drop: (k) => sessionStorage.removeItem(`tether:${linkId}:${k}`),
  };

  const term = new Terminal({
    cursorBlink: true,
    scrollback: 100_000,
    fontFamily: "ui-monospace, Menlo, Consolas, 'DejaVu Sans Mono', monospace",
    fontSize: 14,
    lineHeight: 1.1,
    theme: { background: "#101216" },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($("term"));
  fit.fit();
  term.focus();

  // What the page knows across connections.
  let grant; // the welcome's share grant
  let ws;
  let sid = 0; // the open stream's id on the current connection, 0 when none
  let nextSid = 1;
  let attachId; // this page's attach id, to take its own place back after a drop
  let nextOffset; // the next output byte this page expects
  let inCredit = 0; // bytes the agent lets us send
  let stdinOffset = 0;
  const pending = []; // input waiting for credit
  let unacked = 0; // output drawn but not yet credited back
  let finished = false; // ended or refused: no more reconnects
  let attempts = 0;
  let lastRecv = 0;
  let timer;
  let participants = [];
  let clients = 0;

  // For whoever drives the page (tests, benchmarks): what it has received, and its state.
  const view = {
    state: "connecting",
    offset: () => nextOffset,
    participants: () => participants,
    grant: () => grant,
    error: undefined,
    size: () => ({ cols: term.cols, rows: term.rows }),
    /** The xterm.js terminal (a driver types with `term.input(text, true)`). */
    term,
    /** The terminal's text, scrollback included, wrapped lines joined. */
    text: () => {
      const b = term.buffer.active;
      const lines = [];
      for (let i = 0; i < b.length; i++) {
        const line = b.getLine(i);
        const s = line.translateToString(true);
        if (line.isWrapped && lines.length) lines[lines.length - 1] += s;
        else lines.push(s);
      }
      return lines.join("\n").replace(/\n+$/, "");
    },
  };
  globalThis.tetherShare = view;

  function setState(state, text) {
    view.state = state;
    const el = $("state");
    el.className = state;
    el.textContent = text ?? state;
  }

  function show(message, hint) {
    $("message").textContent = message;
    $("hint").textContent = hint ?? "";
    $("password-form").hidden = true;
    $("overlay").hidden = false;
  }

  function finish(state, message, hint, code) {
    finished = true;
    view.error = code ? { code, message } : undefined;
    setState(state);
    show(message, hint);
    if (ws) ws.close(1000, "done");
  }

  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  }

  // ---- end to end ----

  /** The open stream's end-to-end state: its handshake, then its transport. */
  let sealed; // { sid, transport?, out: Promise, in: Promise }
  const AD_CONTROL = Uint8Array.of(0xff);

  /** The associated data of a DATA frame: its header without the stream id. */
  function frameAd(bytes) {
    const ad = new Uint8Array(12);
    ad.set(bytes.subarray(0, 4), 0);
    ad.set(bytes.subarray(8, DATA_HEADER), 4);
    return ad;
  }

  /** Runs `fn` after everything sent on this stream before it (sealing is asynchronous). */
  function later(st, fn) {
    st.out = st.out.then(() => (st === sealed ? fn() : undefined)).catch((e) => integrity(st, e));
  }

  /** A message about the stream: sealed when the stream is end to end. */
  function sendStream(msg) {
    const st = sealed;
    if (!keys) return send(msg);
    // End to end, nothing about a stream goes in the clear (an answer to a forged challenge
    // included): what is not for the sealed stream is dropped.
    if (!st || st.sid !== msg.sid) return;
    later(st, async () => {
      const { sid: _sid, ...inner } = msg;
      const box = await st.transport.seal(AD_CONTROL, enc.encode(JSON.stringify(inner)));
      send({ t: "sealed", sid: st.sid, box: TetherNoise.toBase64(box) });
    });
  }

  /** A DATA frame (header and plaintext): sealed when the stream is end to end. */
  function sendFrame(frame) {
    const st = sealed;
    if (!keys) return ws.send(frame);
    if (!st) return;
    later(st, async () => {
      const body = await st.transport.seal(frameAd(frame), frame.subarray(DATA_HEADER));
      const out = new Uint8Array(DATA_HEADER + body.length);
      out.set(frame.subarray(0, DATA_HEADER));
      out.set(body, DATA_HEADER);
      if (ws?.readyState === WebSocket.OPEN) ws.send(out);
    });
  }

  function integrity(st, e) {
    if (st !== sealed || finished) return;
    finish(
      "refused",
      `The stream to the machine was altered on the way (${
        e?.message ?? e
      }); nothing more from it is shown.`,
      "The relay, or something between it and you or the machine, changed, dropped or added data.",
      "integrity",
    );
  }

  /** Errors the relay itself may send about a sealed stream (protocol/e2e_stream.ts). */
  const RELAY_ERRORS = new Set(TETHER.clearErrors);

  /** What came for the sealed stream, in order: opened, then handled as if in the clear. */
  function receiveSealed(st, msg, binary) {
    st.in = st.in.then(async () => {
      if (st !== sealed) return;
      if (binary) {
        const bytes = new Uint8Array(binary);
        if (bytes[0] === FRAME_CREDIT) return onBinary(binary);
        if (!st.transport) throw new Error("data before the handshake");
        const plain = await st.transport.open(frameAd(bytes), bytes.subarray(DATA_HEADER));
        const frame = new Uint8Array(DATA_HEADER + plain.length);
        frame.set(bytes.subarray(0, DATA_HEADER));
        frame.set(plain, DATA_HEADER);
        return onBinary(frame.buffer);
      }
      switch (msg.t) {
        case "accept": {
          if (!st.hs || st.transport) throw new Error("an unexpected accept");
          st.transport = (await st.hs.finish(TetherNoise.fromBase64(msg.e2e))).transport;
          // The real open, now that only the agent can read it: sealed first, before
          // anything that waited for the transport.
          const { sid: _sid, ...inner } = st.open;
          const box = await st.transport.seal(AD_CONTROL, enc.encode(JSON.stringify(inner)));
          send({ t: "sealed", sid: st.sid, box: TetherNoise.toBase64(box) });
          st.ready();
          return;
        }
        case "sealed": {
          if (!st.transport) throw new Error("a sealed message before the handshake");
          const plain = await st.transport.open(AD_CONTROL, TetherNoise.fromBase64(msg.box));
          const inner = JSON.parse(new TextDecoder().decode(plain));
          if (["open", "sealed", "accept", "welcome", "hello"].includes(inner.t)) {
            throw new Error(`a sealed '${inner.t}'`);
          }
          return onControl({ ...inner, sid: st.sid });
        }
        case "error":
          if (RELAY_ERRORS.has(msg.code)) return onControl(msg);
          throw new Error(`'${msg.code}' outside the encryption`);
        default:
          throw new Error(`'${msg.t}' outside the encryption`);
      }
    }).catch((e) => integrity(st, e));
  }

  function sendCredit(bytes) {
    if (ws?.readyState !== WebSocket.OPEN) return;
    const f = new DataView(new ArrayBuffer(CREDIT_SIZE));
    f.setUint8(0, FRAME_CREDIT);
    f.setUint8(1, CH_STDOUT);
    f.setUint32(4, sid, true);
    f.setUint32(8, bytes, true);
    ws.send(f.buffer);
  }

  function sendInput() {
    while (pending.length && inCredit > 0 && sid && ws?.readyState === WebSocket.OPEN) {
      let chunk = pending[0];
      const n = Math.min(chunk.length, inCredit, MAX_DATA_PAYLOAD);
      if (n < chunk.length) {
        pending[0] = chunk.subarray(n);
        chunk = chunk.subarray(0, n);
      } else pending.shift();
      const frame = new Uint8Array(DATA_HEADER + n);
      const dv = new DataView(frame.buffer);
      dv.setUint8(0, FRAME_DATA);
      dv.setUint8(1, CH_STDIN);
      dv.setUint32(4, sid, true);
      dv.setUint32(8, Math.floor(stdinOffset / TWO32), true);
      dv.setUint32(12, stdinOffset % TWO32, true);
      frame.set(chunk, DATA_HEADER);
      sendFrame(frame);
      stdinOffset += n;
      inCredit -= n;
    }
  }

  function type(bytes) {
    if (!grant || grant.read_only || finished) return;
    pending.push(bytes);
    sendInput();
  }
  term.onData((s) => type(enc.encode(s)));
  term.onBinary((s) => type(Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(({ cols, rows }) => {
    if (sid && grant && !grant.read_only) sendStream({ t: "resize", sid, cols, rows });
  });
  addEventListener("resize", () => fit.fit());
  // Closing the tab leaves the session as `connect`'s Ctrl-D does: it runs on.
  addEventListener("pagehide", () => {
    if (sid) send({ t: "close", sid, reason: "detach" });
  });

  function onData(dv, bytes) {
    const offset = dv.getUint32(8, true) * TWO32 + dv.getUint32(12, true);
    let payload = bytes.subarray(DATA_HEADER);
    // Resent bytes after a reconnect are dropped; what is new is drawn once.
    if (nextOffset !== undefined && offset < nextOffset) {
      payload = payload.subarray(Math.min(payload.length, nextOffset - offset));
    } else if (nextOffset !== undefined && offset > nextOffset) {
      term.write(`\r\n[tether: ${offset - nextOffset} bytes of output were lost]\r\n`);
    }
    const credited = bytes.length - DATA_HEADER;
    nextOffset = Math.max(nextOffset ?? 0, offset + bytes.length - DATA_HEADER);
    const streamSid = sid;
    term.write(payload, () => {
      // Credit goes back on the stream that carried the bytes, once drawn.
      if (streamSid !== sid) return;
      unacked += credited;
      if (unacked >= WINDOW / 4) {
        sendCredit(unacked);
        unacked = 0;
      }
    });
  }

  function onBinary(buf) {
    const bytes = new Uint8Array(buf);
    if (bytes.length < CREDIT_SIZE) return;
    const dv = new DataView(buf);
    if (dv.getUint32(4, true) !== sid) return;
    if (dv.getUint8(0) === FRAME_DATA && dv.getUint8(1) === CH_STDOUT) onData(dv, bytes);
    else if (dv.getUint8(0) === FRAME_CREDIT && dv.getUint8(1) === CH_STDIN) {
      inCredit += dv.getUint32(8, true);
      sendInput();
    }
  }

  function open() {
    sid = nextSid++;
    unacked = 0;
    inCredit = 0;
    sealed = undefined;
    const machineToken = store.get("machine-token");
    const msg = {
      t: "open",
      sid,
      kind: "pty",
      argv: [],
      stdin: !grant.read_only,
      window: WINDOW,
      term: "xterm-256color",
      cols: term.cols,
      rows: term.rows,
      session: grant.session,
      read_only: grant.read_only,
      ...(nextOffset !== undefined ? { offset: nextOffset } : {}),
      ...(attachId ? { resume: attachId } : {}),
      ...(machineToken ? { token: machineToken } : {}),
    };
    if (!keys) return send(msg);
    // End to end: the handshake goes in an open that only routes; the real one follows
    // sealed once the agent answered.
    const st = { sid, open: msg, out: Promise.resolve(), in: Promise.resolve() };
    sealed = st;
    const prologue = enc.encode(`tether-e2e-v1 ${grant.machine}`);
    st.out = TetherNoise.initiate(prologue, keys.page, keys.machine).then((hs) => {
      st.hs = hs;
      if (st !== sealed) return;
      send({
        t: "open",
        sid: st.sid,
        kind: "pty",
        argv: [],
        stdin: msg.stdin,
        window: WINDOW,
        e2e: { suite: "AESGCM", msg: TetherNoise.toBase64(hs.message) },
      });
    });
    // What is sealed waits for the transport: the accept comes on the way in.
    st.out = st.out.then(() => new Promise((resolve) => (st.ready = resolve)));
  }

  function renderPeople() {
    const names = participants.map((p) => {
      if (p.id === attachId) return "you";
      const who = p.key.startsWith("share:") ? `browser (${p.key.slice(6)})` : `key ${p.key}`;
      return p.read_only ? `${who}, watching` : who;
    });
    const more = clients > participants.length ? ` and ${clients - participants.length} more` : "";
    $("people").textContent = `${clients} here: ${names.join(" · ")}${more}`;
    $("people").title = $("people").textContent;
  }

  let wrongPassword = false;

  async function answerChallenge(ch) {
    $("pw-machine").textContent = grant.machine_name;
    $("message").textContent = wrongPassword
      ? "Wrong password; try again."
      : ch.token_rejected
      ? "The password was changed; enter it again."
      : `${grant.machine_name} has a password.`;
    wrongPassword = false;
    $("hint").textContent = "It is checked by the machine; the relay never sees it.";
    $("password-form").hidden = false;
    $("overlay").hidden = false;
    $("password").value = "";
    $("password").focus();
    const password = await new Promise((resolve) => {
      $("password-form").onsubmit = (ev) => {
        ev.preventDefault();
        resolve($("password").value);
      };
    });
    $("message").textContent = "checking…";
    const salt = Uint8Array.from(ch.salt.match(/../g) ?? [], (h) => parseInt(h, 16));
    const key = await scrypt.scrypt(
      enc.encode(password.normalize("NFC")),
      salt,
      ch.n,
      ch.r,
      ch.p,
      32,
    );
    const hmac = await crypto.subtle.importKey(
      "raw",
      key,
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
    const mac = await crypto.subtle.sign(
      "HMAC",
      hmac,
      enc.encode(`tether-auth-v1|${grant.machine}|${ch.nonce}`),
    );
    const proof = [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
    $("overlay").hidden = true;
    sendStream({ t: "auth", sid: ch.sid, proof });
    term.focus();
  }

  function onControl(msg) {
    switch (msg.t) {
      case "welcome":
        grant = msg.share;
        store.set("resume", grant.resume);
        $("title").textContent = `${grant.machine_name} · session ${grant.session}`;
        document.title = `${grant.machine_name} — tether`;
        $("mode").hidden = !grant.read_only;
        term.options.disableStdin = grant.read_only;
        open();
        return;
      case "started":
        attempts = 0;
        attachId = msg.attach_id;
        inCredit = msg.window;
        if (nextOffset === undefined) nextOffset = msg.offset ?? 0;
        $("overlay").hidden = true;
        setState("connected");
        // Take the window's size (a read-only page does not size the session).
        if (!grant.read_only) sendStream({ t: "resize", sid, cols: term.cols, rows: term.rows });
        sendInput();
        return;
      case "challenge":
        if (msg.token_rejected) store.drop("machine-token");
        answerChallenge(msg).catch((e) => finish("refused", `password check failed: ${e}`));
        return;
      case "auth_ok":
        store.set("machine-token", msg.token);
        return;
      case "participants":
        participants = msg.participants;
        clients = msg.clients;
        renderPeople();
        return;
      case "notice":
        term.write(`\r\n[tether: ${msg.message}]\r\n`);
        return;
      case "exit":
        sid = 0;
        finish(
          "ended",
          `The session ended (exit ${msg.signal ? msg.signal : msg.code}).`,
          "Close this tab.",
        );
        return;
      case "error":
        if (msg.sid !== undefined && msg.sid !== sid) return;
        if (msg.resumable) return lost(ws);
        if (msg.code === "password_invalid" && !finished) {
          // Asked again, on a new stream of the same connection.
          store.drop("machine-token");
          wrongPassword = true;
          return open();
        }
        finish(
          msg.code === "session_not_found" ? "ended" : "refused",
          msg.message,
          msg.hint,
          msg.code,
        );
        return;
    }
  }

  function connect() {
    clearInterval(timer);
    setState(attempts ? "reconnecting" : "connecting");
    sid = 0;
    const resume = store.get("resume");
    if (
      !resume && (!/^[0-9a-f]{12}\.[0-9a-f]{40}$/.test(token) || (fragment.length > 2 && !keys))
    ) {
      return finish(
        "refused",
        "This link is incomplete.",
        "Copy the whole link `tether share` printed, including what follows #.",
        "unauthenticated",
      );
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/v1/share`);
    ws = socket;
    socket.binaryType = "arraybuffer";
    // A connection that does not open in time (a network that swallows it) is given up.
    const opening = setTimeout(() => lost(socket), CONNECT_TIMEOUT_MS);
    socket.onopen = () => {
      clearTimeout(opening);
      lastRecv = Date.now();
      send({
        t: "hello",
        v: TETHER.v,
        role: "client",
        version: TETHER.version,
        share: resume ? { resume } : { token },
      });
      timer = setInterval(() => {
        if (Date.now() - lastRecv > DEAD_AFTER_MS) lost(socket);
        else send({ t: "ping" });
      }, HEARTBEAT_MS);
    };
    socket.onmessage = (ev) => {
      if (socket !== ws) return;
      lastRecv = Date.now();
      if (!keys) {
        if (typeof ev.data === "string") onControl(JSON.parse(ev.data));
        else onBinary(ev.data);
        return;
      }
      // End to end: what concerns the stream goes through its seal; of the rest, only the
      // relay's own (its welcome, a refusal of the connection) is heard. A stream message on
      // another stream id, or none, is dropped: the relay may not speak for the agent.
      if (typeof ev.data === "string") {
        const msg = JSON.parse(ev.data);
        if (msg.sid !== undefined) {
          if (sealed && msg.sid === sealed.sid) receiveSealed(sealed, msg);
        } else if (msg.t === "welcome" || msg.t === "error") onControl(msg);
      } else if (sealed && new DataView(ev.data).getUint32(4, true) === sealed.sid) {
        receiveSealed(sealed, undefined, ev.data);
      }
    };
    socket.onclose = () => lost(socket);
  }

  /**
   * The connection is over (closed, or silent past DEAD_AFTER_MS): it is let go at once —
   * a WebSocket to a peer that vanished may take a minute to report its close — and a new
   * one is tried after a capped, jittered wait.
   */
  function lost(socket) {
    if (socket !== ws) return;
    ws = undefined;
    socket.onclose = null;
    socket.onmessage = null;
    try {
      socket.close();
    } catch { /* closed */ }
    clearInterval(timer);
    sid = 0;
    if (finished) return;
    attempts++;
    const wait = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** Math.min(attempts, 6));
    setState("reconnecting", `reconnecting (${attempts})`);
    setTimeout(connect, wait / 2 + Math.random() * wait / 2);
  }

  connect();
})();
