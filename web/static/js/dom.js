// Building DOM without HTML strings: text always goes in as text, so nothing a
// device or a booking system sends can ever run as code on a staff screen.

/**
 * h("div", {class: "tile", dataset: {room: "gym"}, onclick: fn}, "text", child, [more])
 * Attributes: class, dataset, style (object), on<event> (listener), hidden/disabled
 * (booleans), anything else as an attribute (null/undefined/false: left out).
 */
export function h(tag, attributes, ...children) {
  const element = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") element.setAttribute("class", value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name === "style") {
      // Through the CSSOM, which the page's Content-Security-Policy allows
      // (a style="" attribute it would refuse); "--x" custom properties too.
      for (const [property, setting] of Object.entries(value)) {
        element.style.setProperty(property.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`), setting);
      }
    }
    else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else if (child instanceof Node) element.appendChild(child);
    else element.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace everything inside `element` with `children`. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}
