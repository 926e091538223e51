// Placeholder until the view is written.

export default {
  route: "alarms",
  nav: "nav.alarms",
  staffOnly: false,
  strings: { "zh-CN": {}, en: {} },
  mount(root, ctx, param) {
    root.appendChild(ctx.h("h2", {}, "alarms"));
    return { update() {}, unmount() {} };
  },
};
