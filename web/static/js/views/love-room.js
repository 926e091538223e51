// Placeholder until the view is written.

export default {
  route: "love-room",
  nav: "nav.love_room",
  staffOnly: false,
  strings: { "zh-CN": {}, en: {} },
  mount(root, ctx, param) {
    root.appendChild(ctx.h("h2", {}, "love-room"));
    return { update() {}, unmount() {} };
  },
};
