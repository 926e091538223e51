// Placeholder until the view is written.

export default {
  route: "room",
  nav: null,
  staffOnly: false,
  strings: { "zh-CN": {}, en: {} },
  mount(root, ctx, param) {
    root.appendChild(ctx.h("h2", {}, "room"));
    return { update() {}, unmount() {} };
  },
};
