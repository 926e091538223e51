// Placeholder until the view is written.

export default {
  route: "reports",
  nav: "nav.reports",
  staffOnly: false,
  strings: { "zh-CN": {}, en: {} },
  mount(root, ctx, param) {
    root.appendChild(ctx.h("h2", {}, "reports"));
    return { update() {}, unmount() {} };
  },
};
