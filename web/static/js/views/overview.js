// Overview: the building as a map, floor by floor, one tile per room, laid out
// the way the site file places them. A tile answers at a glance: is anyone
// there and how many against capacity, is the door locked, how warm is it,
// which booking holds it now and which comes next, and is anything wrong.

import {
  door,
  hasDevice,
  headcount,
  occupancy,
  roomAlarms,
  span,
  statusBadge,
  temperature,
} from "./common.js";

export default {
  route: "overview",
  nav: "nav.overview",
  staffOnly: false,
  strings: {
    "zh-CN": {
      "overview.title": "楼层总览",
      "overview.waiting": "正在等待控制器的实时数据…",
      "overview.legend": "图例",
    },
    en: {
      "overview.title": "Building overview",
      "overview.waiting": "Waiting for live data from the controller…",
      "overview.legend": "Legend",
    },
  },
  mount(root, ctx) {
    const { h, t } = ctx;
    const tiles = new Map();
    root.appendChild(h("h2", { class: "visually-hidden" }, t("overview.title")));
    const waiting = h("p", { class: "notice" }, t("overview.waiting"));
    root.appendChild(waiting);
    for (const floor of ctx.site.floors) {
      const rooms = ctx.site.rooms.filter((room) => room.position.floor === floor);
      const columns = Math.max(...rooms.map((room) => room.position.x + room.position.w));
      const map = h("div", { class: "floor-map", style: { "--columns": String(columns) } });
      for (const room of rooms) {
        const tile = h("a", {
          class: "tile",
          href: `#/room/${encodeURIComponent(room.id)}`,
          dataset: { room: room.id },
          style: {
            "--col": String(room.position.x + 1),
            "--row": String(room.position.y + 1),
            "--w": String(room.position.w),
            "--h": String(room.position.h),
          },
        });
        tiles.set(room.id, tile);
        map.appendChild(tile);
      }
      const heading = `floor-${floor}`;
      root.appendChild(
        h(
          "section",
          { class: "floor", "aria-labelledby": heading },
          ctx.site.floors.length > 1 ? h("h2", { id: heading }, t("floor", { floor })) : h("h2", { id: heading, class: "visually-hidden" }, t("overview.title")),
          map,
        ),
      );
    }

    function render(roomId) {
      const live = ctx.live.rooms.get(roomId);
      const tile = tiles.get(roomId);
      if (!tile) return;
      if (!live) {
        tile.className = "tile tone-unknown";
        ctx.fill(tile, h("h3", { class: "tile-name" }, ctx.roomName(roomId)));
        return;
      }
      waiting.hidden = true;
      ctx.fill(tile, ...tileContent(ctx, live));
      const seen = occupancy(ctx, live);
      const alarms = roomAlarms(ctx, roomId);
      tile.className = `tile tone-${seen.tone}${alarms.length ? " has-alarm" : ""}${live.state.fire_alarm ? " fire" : ""}`;
      tile.setAttribute("aria-label", tileLabel(ctx, live, alarms));
    }

    function renderAll() {
      for (const roomId of tiles.keys()) render(roomId);
    }

    renderAll();
    return {
      update(change) {
        if (change.type === "room") ctx.later(`tile:${change.data.id}`, () => render(change.data.id));
        else if (["snapshot", "alarms", "site"].includes(change.type)) ctx.later("tiles", renderAll);
      },
      unmount() {},
    };
  },
};

function tileContent(ctx, room) {
  const { h, t } = ctx;
  const seen = occupancy(ctx, room);
  const content = [
    h(
      "h3",
      { class: "tile-name" },
      h("span", { class: "name" }, ctx.roomName(room.id)),
      room.always_open ? h("span", { class: "tag" }, t("room.always_open")) : null,
    ),
  ];
  const visitors = ctx.live.site && ctx.live.site.visitors;
  if (seen.tone !== "none") {
    content.push(
      h(
        "p",
        { class: `tile-occupancy tone-${seen.tone}` },
        h("span", { class: "icon", "aria-hidden": "true" }, seen.icon),
        ` ${seen.text}`,
        h("span", { class: "count" }, headcount(ctx, room)),
      ),
    );
  } else if (visitors && hasDevice(ctx, room.id, "people_counter")) {
    const counts = { entries: ctx.fmt.number(visitors.entries), inside: ctx.fmt.number(visitors.inside) };
    content.push(h("p", { class: "tile-occupancy" }, t("room.entrance_counts", counts)));
  }
  if (room.capacity && room.state.count !== null && room.state.count !== undefined) {
    content.push(
      h("meter", {
        class: "tile-meter",
        min: "0",
        max: String(room.capacity),
        high: String(Math.ceil(room.capacity * 0.9)),
        optimum: "0",
        value: String(Math.min(room.state.count, room.capacity)),
        "aria-hidden": "true",
      }),
    );
  }
  const lock = door(ctx, room);
  const warm = temperature(ctx, room.state.temperature);
  if (lock || warm) {
    content.push(
      h(
        "p",
        { class: "tile-facts" },
        lock ? h("span", { class: `door tone-${lock.tone}` }, h("span", { "aria-hidden": "true" }, lock.icon), ` ${lock.text}`) : null,
        warm ? h("span", { class: "temperature" }, h("span", { "aria-hidden": "true" }, "🌡"), ` ${warm}`) : null,
      ),
    );
  }
  const booking = room.booking || {};
  if (room.bookable || booking.current || booking.next) {
    content.push(bookingLine(ctx, "room.now", booking.current));
    if (booking.next) content.push(bookingLine(ctx, "room.next", booking.next));
  }
  const alarms = roomAlarms(ctx, room.id);
  if (alarms.length) {
    content.push(
      h(
        "ul",
        { class: "tile-alarms" },
        alarms.map((alarm) => h("li", { class: `severity-${alarm.severity}` }, "⚠ ", t(`kind.${alarm.kind}`))),
      ),
    );
  }
  return content;
}

function bookingLine(ctx, labelKey, booking) {
  const { h, t } = ctx;
  if (!booking) {
    return h("p", { class: "tile-booking none" }, h("span", { class: "label" }, t(labelKey)), ` ${t("room.no_booking")}`);
  }
  return h(
    "p",
    { class: "tile-booking" },
    h("span", { class: "label" }, t(labelKey)),
    ` ${span(ctx, booking)} `,
    h("span", { class: "title" }, booking.title || ""),
    " ",
    statusBadge(ctx, booking.status),
  );
}

function tileLabel(ctx, room, alarms) {
  const seen = occupancy(ctx, room);
  const parts = [ctx.roomName(room.id), seen.text];
  if (seen.tone !== "none") parts.push(headcount(ctx, room));
  const lock = door(ctx, room);
  if (lock) parts.push(lock.text);
  const warm = temperature(ctx, room.state.temperature);
  if (warm) parts.push(warm);
  for (const alarm of alarms) parts.push(ctx.t(`kind.${alarm.kind}`));
  return parts.join(", ");
}
