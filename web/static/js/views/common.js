// Pieces more than one view draws the same way: a room's occupancy, its door,
// a booking's time and status. Meaning is never carried by colour alone:
// every state has its icon and its words, and the colour only repeats them.

/** {icon, text, tone} of a room's occupancy; tone is a CSS class suffix. */
export function occupancy(ctx, room) {
  const state = room.state || {};
  if (!hasDevice(ctx, room.id, "occupancy")) {
    return { icon: "–", text: ctx.t("room.no_sensor"), tone: "none" };
  }
  if (state.occupied === null || state.occupied === undefined) {
    return { icon: "?", text: ctx.t("room.unknown"), tone: "unknown" };
  }
  const over = room.capacity && state.count !== null && state.count > room.capacity;
  if (over) return { icon: "▲", text: ctx.t("room.over_capacity"), tone: "over" };
  return state.occupied
    ? { icon: "●", text: ctx.t("room.occupied"), tone: "occupied" }
    : { icon: "○", text: ctx.t("room.empty"), tone: "empty" };
}

/** "5 / 16 people", "5 people" or "–" */
export function headcount(ctx, room) {
  const count = room.state ? room.state.count : null;
  if (count === null || count === undefined) return "–";
  return room.capacity
    ? ctx.t("room.count_capacity", { count: ctx.fmt.number(count), capacity: ctx.fmt.number(room.capacity) })
    : ctx.t("room.count", { count: ctx.fmt.number(count) });
}

/** {icon, text, tone} of a room's door, or null for a room without a lock. */
export function door(ctx, room) {
  const state = room.state || {};
  if (!state.lock_state && state.locked === null && !state.door) return null;
  const parts = [];
  let icon = "🔒";
  let tone = "locked";
  if (state.lock_state === "JAMMED") {
    icon = "⚠";
    tone = "jammed";
    parts.push(ctx.t("lock.JAMMED"));
  } else if (state.locked === true) {
    parts.push(ctx.t("lock.LOCKED"));
  } else if (state.locked === false) {
    icon = "🔓";
    tone = "unlocked";
    parts.push(ctx.t("lock.UNLOCKED"));
  } else {
    icon = "?";
    tone = "unknown";
    parts.push(ctx.t("lock.UNKNOWN"));
  }
  if (state.door === "open") {
    icon = "🚪";
    tone = tone === "jammed" ? tone : "open";
    parts.push(ctx.t("door.open"));
  }
  return { icon, text: parts.join(" · "), tone };
}

/** "10:00–11:30" in the site's zone */
export function span(ctx, booking) {
  return `${ctx.fmt.time(booking.start)}–${ctx.fmt.time(booking.end)}`;
}

/** A status badge: icon and words, coloured by status. */
export function statusBadge(ctx, status) {
  const icons = {
    scheduled: "◷",
    active: "▶",
    checked_in: "✔",
    no_show: "✕",
    ended: "■",
    cancelled: "⊘",
  };
  return ctx.h("span", { class: `badge status-${status}` }, `${icons[status] || ""} ${ctx.t(`booking.${status}`)}`);
}

/** "23.5 °C" or null */
export function temperature(ctx, value) {
  if (value === null || value === undefined) return null;
  return ctx.t("units.celsius", { value: ctx.fmt.decimal(value) });
}

/** The active alarms of one room (from the live store). */
export function roomAlarms(ctx, roomId) {
  return ctx.live.alarms.filter((alarm) => alarm.room === roomId && alarm.state === "active");
}

/** Whether the room has a device of this kind (per the site file). */
export function hasDevice(ctx, roomId, kind) {
  return ctx.site.devices.some((device) => device.room === roomId && device.kind === kind);
}
