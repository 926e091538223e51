// Placeholder until the view is written.

export default {
  route: "bookings",
  nav: "nav.bookings",
  staffOnly: false,
  strings: { "zh-CN": {}, en: {} },
  mount(root, ctx, param) {
    root.appendChild(ctx.h("h2", {}, "bookings"));
    return { update() {}, unmount() {} };
  },
};
