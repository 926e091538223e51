// Placeholder until the view is written.

export default {
  route: "devices",
  nav: "nav.devices",
  staffOnly: false,
  strings: { "zh-CN": {}, en: {} },
  mount(root, ctx, param) {
    root.appendChild(ctx.h("h2", {}, "devices"));
    return { update() {}, unmount() {} };
  },
};
