// The status page: boot, header, navigation, the live store and the views.
//
// One live store (rooms, devices, the site, active alarms) is filled by the
// stream's snapshot and kept current by its messages; views read it through
// `ctx` and are told what changed. Pages are hash routes (#/room/gym), so a
// reload or a bookmark lands on the same page.

import { ApiFailure, makeApi } from "./api.js";
import { fill, h } from "./dom.js";
import { makeFormat } from "./format.js";
import { addStrings, applyStatic, storeLanguage, storedLanguage, translate } from "./i18n.js";
import { LiveStream } from "./live.js";
import alarms from "./views/alarms.js";
import bookings from "./views/bookings.js";
import cabinet from "./views/cabinet.js";
import devices from "./views/devices.js";
import loveRoom from "./views/love-room.js";
import overview from "./views/overview.js";
import reports from "./views/reports.js";
import room from "./views/room.js";

const VIEWS = [overview, room, loveRoom, bookings, cabinet, alarms, reports, devices];
const DEFAULT_ROUTE = "overview";
const ALARM_REFRESH_MS = 300;

for (const view of VIEWS) addStrings(view.strings);

class Page {
  constructor(session, site) {
    this.session = session;
    this.site = site;
    this.lang = storedLanguage();
    this.live = { rooms: new Map(), devices: new Map(), site: null, alarms: [], state: "connecting" };
    this.clockOffset = 0;
    this.current = null; // {view, param, handle}
    this.alarmTimer = null;
    this.wasLost = false;
    this.api = makeApi(session, () => this.sessionEnded());
    this.ctx = this.makeContext();
  }

  makeContext() {
    const page = this;
    return {
      get lang() {
        return page.lang;
      },
      get fmt() {
        return page.fmt;
      },
      site: this.site,
      live: this.live,
      api: this.api,
      session: this.session,
      canAct: this.session.scopes.includes("staff"),
      h,
      fill,
      t: (key, vars) => translate(page.lang, key, vars),
      /** The site's time now (the controller's clock, which a demo may run fast). */
      now: () => new Date(Date.now() + page.clockOffset),
      roomName: (id) => page.roomName(id),
      deviceName: (id) => page.deviceName(id),
      siteRoom: (id) => page.site.rooms.find((candidate) => candidate.id === id),
      refusal: (error) => page.refusal(error),
      navigate: (hash) => {
        window.location.hash = hash;
      },
      /** Run `fn` once, soon, however often it is asked for before then (per key). */
      later: makeCoalescer(),
    };
  }

  roomName(id) {
    const found = this.site.rooms.find((candidate) => candidate.id === id);
    if (!found) return id || "";
    return this.lang === "en" && found.name_en ? found.name_en : found.name;
  }

  deviceName(id) {
    const found = this.site.devices.find((candidate) => candidate.id === id);
    return found && found.name ? found.name : id;
  }

  /** A refusal or failure from the API, in words staff can act on. */
  refusal(error) {
    if (!(error instanceof ApiFailure)) return String(error);
    const key = error.status === 429 ? "refusal.rate_limited" : `refusal.${error.code}`;
    const known = translate(this.lang, key);
    return known !== key ? known : error.message;
  }

  start() {
    this.fmt = makeFormat(this.lang, this.site.timezone);
    this.renderChrome();
    window.addEventListener("hashchange", () => this.route());
    document.getElementById("language-switch").addEventListener("click", () => this.switchLanguage());
    document.getElementById("logout").addEventListener("click", () => this.logout());
    this.route();
    this.stream = new LiveStream({
      onMessage: (kind, data) => this.receive(kind, data),
      onState: (state) => this.connectionState(state),
      onSessionEnded: () => this.sessionEnded(),
    });
    this.stream.start();
    setInterval(() => this.tickClock(), 1000);
  }

  // -- chrome: header, banners, navigation -------------------------------------

  renderChrome() {
    const t = this.ctx.t;
    document.documentElement.lang = this.lang;
    document.title = `${t("app.title")} · ${this.lang === "en" && this.site.name_en ? this.site.name_en : this.site.name}`;
    applyStatic(document.body, this.lang);
    document.getElementById("site-name").textContent =
      this.lang === "en" && this.site.name_en ? this.site.name_en : this.site.name;
    const switcher = document.getElementById("language-switch");
    switcher.textContent = t("app.switch");
    switcher.lang = this.lang === "en" ? "zh-CN" : "en";
    const logout = document.getElementById("logout");
    logout.hidden = this.session.via !== "session";
    const who = document.getElementById("who");
    if (this.session.via === "open") {
      fill(who, h("span", { class: "badge warning" }, "⚠ ", t("app.open_api")));
    } else {
      fill(who, h("span", { class: "badge" }, this.ctx.canAct ? t("app.staff") : t("app.read_only")));
    }
    document.getElementById("pages").setAttribute("aria-label", t("app.pages"));
    this.renderNav();
    this.renderHeader();
    this.renderConnection();
  }

  renderNav() {
    const list = document.getElementById("page-links");
    const active = this.current ? this.current.view.route : null;
    fill(
      list,
      VIEWS.filter((view) => view.nav && (!view.staffOnly || this.ctx.canAct)).map((view) =>
        h(
          "li",
          {},
          h(
            "a",
            { href: `#/${view.route}`, "aria-current": view.route === active ? "page" : null },
            this.ctx.t(view.nav),
          ),
        ),
      ),
    );
  }

  renderHeader() {
    const site = this.live.site;
    const t = this.ctx.t;
    const visitors = site && site.visitors;
    document.getElementById("figure-inside").textContent = visitors ? this.fmt.number(visitors.inside) : "–";
    document.getElementById("figure-visitors").textContent = visitors ? this.fmt.number(visitors.entries) : "–";
    const counts = site && site.alarms;
    const alarmLink = document.getElementById("figure-alarms");
    const box = document.getElementById("figure-alarms-box");
    if (counts) {
      alarmLink.textContent = counts.active > 0 ? `⚠ ${this.fmt.number(counts.active)}` : "0";
      box.classList.toggle("alert", counts.active > 0);
      box.classList.toggle("critical", counts.active_critical > 0);
    } else {
      alarmLink.textContent = "–";
    }
    const banner = document.getElementById("fire-banner");
    const fire = Boolean(site && site.fire_alarm);
    document.body.classList.toggle("fire", fire);
    if (fire) {
      const children = [h("strong", {}, "🔥 ", t("fire.banner"))];
      if (this.ctx.canAct) {
        children.push(
          h("button", { type: "button", class: "button", onclick: () => this.resetFire() }, t("fire.reset")),
        );
      }
      fill(banner, ...children);
    }
    banner.hidden = !fire;
  }

  async resetFire() {
    if (!window.confirm(this.ctx.t("fire.reset_confirm"))) return;
    try {
      await this.api.send("POST", "/api/fire/reset");
      this.toast(this.ctx.t("fire.reset_done"));
    } catch (error) {
      this.toast(this.refusal(error), true);
    }
  }

  toast(message, isError = false) {
    const banner = document.getElementById("connection-banner");
    banner.textContent = message;
    banner.className = isError ? "connection-banner error" : "connection-banner ok";
    banner.hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => this.renderConnection(), 6000);
  }

  connectionState(state) {
    if (state === "lost") this.wasLost = true;
    this.live.state = state;
    this.renderConnection();
    if (state === "live" && this.wasLost) {
      this.wasLost = false;
      this.toast(this.ctx.t("connection.restored"));
    }
  }

  renderConnection() {
    const state = this.live.state;
    const t = this.ctx.t;
    const figure = document.getElementById("figure-connection");
    const label = { live: "● ", lost: "✕ ", connecting: "◌ " }[state] + t(`connection.${state}`);
    figure.textContent = label;
    figure.className = `connection-${state}`;
    const banner = document.getElementById("connection-banner");
    banner.className = "connection-banner";
    banner.textContent = t("connection.banner");
    banner.hidden = state !== "lost";
    document.body.classList.toggle("disconnected", state === "lost");
  }

  tickClock() {
    const clock = document.getElementById("site-clock");
    const now = this.ctx.now();
    clock.textContent = `${this.fmt.date(now)} ${this.fmt.timeSeconds(now)}`;
    clock.dateTime = now.toISOString();
  }

  // -- the live store --------------------------------------------------------------

  receive(kind, data) {
    if (kind === "snapshot") {
      this.live.rooms.clear();
      for (const found of data.rooms) this.live.rooms.set(found.id, found);
      this.live.devices.clear();
      for (const device of data.devices) this.live.devices.set(device.id, device);
      this.live.site = data.site;
      this.setClock(data.time);
      this.refreshAlarms();
    } else if (kind === "room") {
      this.live.rooms.set(data.id, data);
    } else if (kind === "device") {
      this.live.devices.set(data.id, data);
    } else if (kind === "site") {
      this.live.site = { ...this.live.site, ...data };
    } else if (kind === "heartbeat") {
      this.setClock(data.time);
      return;
    } else if (kind === "event" && data.alarm_id !== undefined) {
      clearTimeout(this.alarmTimer);
      this.alarmTimer = setTimeout(() => this.refreshAlarms(), ALARM_REFRESH_MS);
    }
    if (kind === "snapshot" || kind === "site") this.renderHeader();
    this.tell({ type: kind, data });
  }

  setClock(time) {
    const at = Date.parse(time);
    if (!Number.isNaN(at)) this.clockOffset = at - Date.now();
    this.tickClock();
  }

  async refreshAlarms() {
    try {
      const body = await this.api.get("/api/alarms?state=active&limit=1000");
      this.live.alarms = body.alarms;
      this.tell({ type: "alarms", data: body.alarms });
    } catch {
      // the stream's own reconnect tells staff the controller is unreachable
    }
  }

  tell(change) {
    if (this.current && this.current.handle && this.current.handle.update) {
      this.current.handle.update(change);
    }
  }

  // -- routing ----------------------------------------------------------------------

  route() {
    const [name, ...rest] = window.location.hash.replace(/^#\/?/, "").split("/");
    const view = VIEWS.find((candidate) => candidate.route === (name || DEFAULT_ROUTE));
    const param = rest.length ? decodeURIComponent(rest.join("/")) : null;
    this.mount(view, param);
  }

  mount(view, param) {
    if (this.current && this.current.handle && this.current.handle.unmount) this.current.handle.unmount();
    const main = document.getElementById("main");
    main.replaceChildren();
    main.className = view ? `view-${view.route}` : "";
    this.current = view ? { view, param, handle: null } : null;
    this.renderNav();
    if (!view) {
      main.appendChild(h("p", { class: "notice" }, this.ctx.t("app.not_found")));
      return;
    }
    if (view.staffOnly && !this.ctx.canAct) {
      main.appendChild(h("p", { class: "notice" }, this.ctx.t("app.staff_only")));
      return;
    }
    try {
      this.current.handle = view.mount(main, this.ctx, param) || null;
    } catch (error) {
      main.appendChild(h("p", { class: "error" }, this.ctx.t("app.error", { message: String(error) })));
      throw error;
    }
  }

  switchLanguage() {
    this.lang = this.lang === "en" ? "zh-CN" : "en";
    storeLanguage(this.lang);
    this.fmt = makeFormat(this.lang, this.site.timezone);
    this.renderChrome();
    this.tickClock();
    if (this.current) this.mount(this.current.view, this.current.param);
  }

  async logout() {
    try {
      await this.api.send("POST", "/logout");
    } finally {
      window.location.assign("/login");
    }
  }

  sessionEnded() {
    if (this.stream) this.stream.stop();
    window.location.assign("/login");
  }
}

function makeCoalescer() {
  const pending = new Map();
  return (key, fn, delay = 50) => {
    if (pending.has(key)) {
      pending.get(key).fn = fn;
      return;
    }
    const entry = { fn };
    pending.set(key, entry);
    setTimeout(() => {
      pending.delete(key);
      entry.fn();
    }, delay);
  };
}

async function boot() {
  const lang = storedLanguage();
  document.documentElement.lang = lang;
  applyStatic(document.body, lang);
  const first = await fetch("/api/session", { credentials: "same-origin", cache: "no-store" });
  if (first.status === 401) {
    window.location.assign("/login");
    return;
  }
  const session = await first.json();
  const siteResponse = await fetch("/api/site", { credentials: "same-origin", cache: "no-store" });
  const site = await siteResponse.json();
  const page = new Page(session, site);
  page.start();
}

boot().catch((error) => {
  const main = document.getElementById("main");
  fill(
    main,
    h("p", { class: "error", role: "alert" }, translate(storedLanguage(), "app.error", { message: String(error) })),
    h("button", { type: "button", class: "button", onclick: () => window.location.reload() }, translate(storedLanguage(), "app.retry")),
  );
});
