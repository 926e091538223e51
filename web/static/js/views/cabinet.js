// Placeholder until the view is written.

export default {
  route: "cabinet",
  nav: "nav.cabinet",
  staffOnly: true,
  strings: { "zh-CN": {}, en: {} },
  mount(root, ctx, param) {
    root.appendChild(ctx.h("h2", {}, "cabinet"));
    return { update() {}, unmount() {} };
  },
};
