// The page's live connection: Server-Sent Events from /api/stream.
//
// Every (re)connection starts with a snapshot, so after a break the page is
// whole again, with nothing missed left on screen. The stream is watched: the
// controller sends a heartbeat after 15 s of quiet, so 40 s of silence means
// the connection is dead even if the browser has not noticed. Reconnects back
// off from 1 s to 10 s; before each, the session is checked, so an ended
// session goes to the login page instead of retrying forever.

const SILENCE_LIMIT_MS = 40000;
const BACKOFF_MS = [1000, 2000, 4000, 8000, 10000];
const KINDS = ["snapshot", "room", "device", "site", "event", "heartbeat"];

export class LiveStream {
  /**
   * onMessage(kind, data) for every message; onState("connecting" | "live" | "lost");
   * onSessionEnded() when the controller says the session is over.
   */
  constructor({ onMessage, onState, onSessionEnded }) {
    this.onMessage = onMessage;
    this.onState = onState;
    this.onSessionEnded = onSessionEnded;
    this.source = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.watchdog = null;
    this.stopped = false;
    this.state = null;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    this.closeSource();
    clearTimeout(this.retryTimer);
  }

  open() {
    this.setState("connecting");
    const source = new EventSource("/api/stream");
    this.source = source;
    for (const kind of KINDS) {
      source.addEventListener(kind, (message) => this.receive(kind, message));
    }
    source.addEventListener("session_ended", () => {
      this.stop();
      this.onSessionEnded();
    });
    source.onerror = () => {
      if (this.source === source) this.lost();
    };
    this.armWatchdog();
  }

  receive(kind, message) {
    this.armWatchdog();
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      return; // a message the page cannot read changes nothing on screen
    }
    if (kind === "snapshot") {
      this.attempt = 0;
      this.setState("live");
    }
    this.onMessage(kind, data);
  }

  armWatchdog() {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.lost(), SILENCE_LIMIT_MS);
  }

  lost() {
    this.closeSource();
    if (this.stopped) return;
    this.setState("lost");
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.retry(), delay);
  }

  async retry() {
    if (this.stopped) return;
    try {
      const response = await fetch("/api/session", { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) {
        this.stop();
        this.onSessionEnded();
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
    } catch {
      this.lost(); // still unreachable: wait longer
      return;
    }
    this.open();
  }

  closeSource() {
    clearTimeout(this.watchdog);
    if (this.source) {
      this.source.onerror = null;
      this.source.close();
      this.source = null;
    }
  }

  setState(state) {
    if (state === this.state) return;
    // While reconnecting after a loss the page stays "lost" until a snapshot arrives.
    if (state === "connecting" && this.state === "lost") return;
    this.state = state;
    this.onState(state);
  }
}
