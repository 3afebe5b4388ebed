// Search by region and "Why?" on dinoseek's page: a box drawn on the query image (mouse,
// touch or pen through pointer events, or the keyboard), the matched box of each hit drawn on
// its thumbnail, and the corresponding patches of a query and a hit joined by lines.
//
// Loaded before app.js, whose helpers (api, explain, imageUrl, ...) it uses only once the
// page runs. Every box is in fractions of an ORIGINAL image's width and height, as the API
// speaks them: each drawing is an SVG over its <img> whose viewBox is the image's own pixels,
// fitted to the same box the way the image is (the images drawn on are object-fit: contain,
// the SVG "xMidYMid meet"), so a box lands where the image really is, letterbox included.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MIN_BOX = 0.02; // a smaller drag is a click, not a box
const KEY_STEP = 0.05; // arrow keys move (Shift: resize) the box by this fraction
const WHY_CELL = 360; // each image of the "Why?" view fits a square of this many units
const WHY_GAP = 48;
const WHY_IMAGE_SIZE = 512; // the stored images' thumbnails in the "Why?" view
const MAX_PAIRS = 20;

function svgElement(name, attributes = {}) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

const clamp = (value) => Math.min(1, Math.max(0, value));
const round4 = (value) => Math.round(value * 10000) / 10000;

// "x,y,w,h" as the API reads it: four decimals, kept inside the image.
function boxText(box) {
  const x = round4(box.x);
  const y = round4(box.y);
  return [x, y, Math.min(round4(box.w), round4(1 - x)), Math.min(round4(box.h), round4(1 - y))].join(",");
}

function parseBoxText(text) {
  const values = String(text || "").split(",").map(Number);
  if (values.length !== 4 || !values.every(Number.isFinite)) return null;
  const [x, y, w, h] = values;
  return { x, y, w, h };
}

// Once the image has its natural size (at once when it is already decoded).
function whenLoaded(image, callback) {
  if (image.complete && image.naturalWidth) callback(image.naturalWidth, image.naturalHeight);
  else image.addEventListener("load", () => callback(image.naturalWidth, image.naturalHeight), { once: true });
}

// An SVG over ``image`` (object-fit: contain; its parent is positioned) whose user units are
// the image's pixels.
function overlayOn(image, className) {
  const layer = svgElement("svg", { class: className, "aria-hidden": "true" });
  layer.setAttribute("preserveAspectRatio", "xMidYMid meet");
  image.after(layer);
  whenLoaded(image, (width, height) => layer.setAttribute("viewBox", `0 0 ${width} ${height}`));
  return layer;
}

function placeRect(rect, layer, box) {
  const [, , width, height] = (layer.getAttribute("viewBox") || "0 0 0 0").split(" ").map(Number);
  rect.setAttribute("x", box.x * width);
  rect.setAttribute("y", box.y * height);
  rect.setAttribute("width", box.w * width);
  rect.setAttribute("height", box.h * height);
}

// -- a hit's matched box on its thumbnail -------------------------------------------------

function drawHitRegion(item, region) {
  item.classList.add("with-region");
  const image = item.querySelector(".thumb img");
  const layer = overlayOn(image, "region-layer");
  const rect = svgElement("rect", { class: "hit-region", "vector-effect": "non-scaling-stroke" });
  layer.append(rect);
  whenLoaded(image, () => placeRect(rect, layer, region));
  const where = `matched at x ${region.x.toFixed(2)}, y ${region.y.toFixed(2)}, ` +
    `${region.w.toFixed(2)} by ${region.h.toFixed(2)} of the image`;
  item.querySelector(".thumb").setAttribute("title", where);
  item.dataset.region = boxText(region);
}

// -- what the model sees of the query image ------------------------------------------------

// The part of an image of ``width`` x ``height`` pixels the model sees, in fractions of it,
// from /ready's ``input`` (resized so the shortest edge is resize_shortest_edge, or to
// resize_to, then centre-cropped to crop), as dinoseek.input_geometry computes it; the whole
// image when the page does not know.
function visibleBox(input, width, height) {
  const whole = { x: 0, y: 0, w: 1, h: 1 };
  if (!input || !input.crop || !width || !height) return whole;
  let resized = [width, height];
  if (input.resize_to) {
    resized = [input.resize_to[1], input.resize_to[0]];
  } else if (input.resize_shortest_edge) {
    const short = Math.min(width, height);
    const long = Math.trunc((input.resize_shortest_edge * Math.max(width, height)) / short);
    resized = width <= height ? [input.resize_shortest_edge, long] : [long, input.resize_shortest_edge];
  }
  const [newWidth, newHeight] = resized;
  const [cropHeight, cropWidth] = input.crop;
  const left = Math.floor((newWidth - cropWidth) / 2) / newWidth;
  const top = Math.floor((newHeight - cropHeight) / 2) / newHeight;
  const x = clamp(left);
  const y = clamp(top);
  return { x, y, w: clamp(left + cropWidth / newWidth) - x, h: clamp(top + cropHeight / newHeight) - y };
}

// Shades the parts of the query image the crop leaves out (a box there cannot be searched).
function shadeUnseen(layer, input, width, height) {
  const seen = visibleBox(input, width, height);
  if (seen.w >= 0.999 && seen.h >= 0.999) return;
  const [x0, y0, x1, y1] = [seen.x * width, seen.y * height, (seen.x + seen.w) * width, (seen.y + seen.h) * height];
  const shade = svgElement("path", {
    class: "unseen",
    "fill-rule": "evenodd",
    d: `M0 0H${width}V${height}H0Z M${x0} ${y0}V${y1}H${x1}V${y0}Z`,
  });
  shade.dataset.seen = boxText(seen);
  const title = svgElement("title");
  title.textContent = "The model does not see the shaded part: it is cropped off before the image is embedded";
  shade.append(title);
  layer.prepend(shade);
}

// -- drawing a box on the query image -----------------------------------------------------

// On a query card's image; ``box`` is the box already searched (or null). ``onBox`` gets a
// new box, ``onClear`` asks for the whole image again.
function attachBoxDrawing(article, { box, input, onBox, onClear }) {
  const image = article.querySelector(".preview img");
  if (!image) return;
  const tools = article.querySelector(".region-tools");
  tools.hidden = false;
  const clear = tools.querySelector(".whole-image");
  clear.hidden = !box;
  clear.addEventListener("click", onClear);
  const layer = overlayOn(image, "draw-layer");
  layer.removeAttribute("aria-hidden");
  layer.setAttribute("tabindex", "0");
  layer.setAttribute("role", "application");
  layer.setAttribute("aria-label", "Draw a box on the query image to search by that region");
  const help = tools.querySelector(".region-help");
  help.id = `region-help-${++drawings}`;
  layer.setAttribute("aria-describedby", help.id);
  const drawing = new BoxDrawing(layer, box, onBox);
  whenLoaded(image, (width, height) => {
    shadeUnseen(layer, input, width, height);
    drawing.show(drawing.searched);
  });
  layer.addEventListener("pointerdown", (event) => drawing.press(event));
  layer.addEventListener("pointermove", (event) => drawing.drag(event));
  layer.addEventListener("pointerup", (event) => drawing.release(event));
  layer.addEventListener("pointercancel", () => drawing.cancel());
  layer.addEventListener("keydown", (event) => drawing.key(event));
}

let drawings = 0;

const KEY_MOVES = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

// The box on one query image: the one searched, and the one being drawn with a pointer
// (a drag from corner to corner) or with the keyboard (Enter starts a box in the middle or
// takes the one searched, arrow keys move it, Shift+arrow keys resize it, Enter searches by
// it, Escape puts back the searched one).
class BoxDrawing {
  constructor(layer, searched, onBox) {
    this.layer = layer;
    this.searched = searched;
    this.onBox = onBox;
    this.rect = svgElement("rect", { class: "drawn-box", "vector-effect": "non-scaling-stroke" });
    this.rect.style.display = "none";
    layer.append(this.rect);
    this.start = null; // where a drag began
    this.editing = null; // the box the keyboard moves
  }

  show(box) {
    this.rect.style.display = box ? "" : "none";
    if (box) placeRect(this.rect, this.layer, box);
  }

  // A pointer's position as fractions of the image (its letterbox clamped away).
  fraction(event) {
    const [, , width, height] = this.layer.getAttribute("viewBox").split(" ").map(Number);
    const point = this.layer.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    const inside = point.matrixTransform(this.layer.getScreenCTM().inverse());
    return { x: clamp(inside.x / width), y: clamp(inside.y / height) };
  }

  spanned(event) {
    const end = this.fraction(event);
    return {
      x: Math.min(this.start.x, end.x),
      y: Math.min(this.start.y, end.y),
      w: Math.abs(this.start.x - end.x),
      h: Math.abs(this.start.y - end.y),
    };
  }

  press(event) {
    if (event.button !== 0 || !this.layer.getAttribute("viewBox")) return;
    event.preventDefault();
    this.layer.setPointerCapture(event.pointerId);
    this.start = this.fraction(event);
  }

  drag(event) {
    if (this.start !== null) this.show(this.spanned(event));
  }

  release(event) {
    if (this.start === null) return;
    const box = this.spanned(event);
    this.start = null;
    if (box.w >= MIN_BOX && box.h >= MIN_BOX) this.search(box);
    else this.show(this.searched);
  }

  cancel() {
    this.start = null;
    this.show(this.searched);
  }

  search(box) {
    this.searched = box;
    this.editing = null;
    this.show(box);
    this.onBox(box);
  }

  key(event) {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      if (this.editing === null) {
        this.editing = this.searched ? { ...this.searched } : { x: 0.25, y: 0.25, w: 0.5, h: 0.5 };
        this.show(this.editing);
      } else {
        this.search(this.editing);
      }
    } else if (event.key === "Escape" && this.editing !== null) {
      event.preventDefault();
      this.editing = null;
      this.show(this.searched);
    } else if (KEY_MOVES[event.key] && this.editing !== null) {
      event.preventDefault();
      const [dx, dy] = KEY_MOVES[event.key].map((step) => step * KEY_STEP);
      this.editing = event.shiftKey ? resized(this.editing, dx, dy) : moved(this.editing, dx, dy);
      this.show(this.editing);
    }
  }
}

function moved(box, dx, dy) {
  return {
    ...box,
    x: clamp(Math.min(1 - box.w, box.x + dx)),
    y: clamp(Math.min(1 - box.h, box.y + dy)),
  };
}

function resized(box, dx, dy) {
  return {
    ...box,
    w: Math.min(1 - box.x, Math.max(MIN_BOX, box.w + dx)),
    h: Math.min(1 - box.y, Math.max(MIN_BOX, box.h + dy)),
  };
}

// -- "Why?": the corresponding patches of the query and a hit -----------------------------

// ``query``: {id} for a stored image, or {file} for an upload; ``hit``: a result.
async function showWhy(query, hit, params) {
  const dialog = document.getElementById("why");
  const status = dialog.querySelector(".why-status");
  const picture = dialog.querySelector(".why-picture");
  const hitName = hit.path || hit.id;
  dialog.querySelector(".why-names").textContent = `${query.name}  ↔  ${hitName}`;
  picture.replaceChildren();
  picture.setAttribute("hidden", "");
  dialog.querySelector(".why-legend").hidden = true;
  status.textContent = "Matching the patches of the two images…";
  status.className = "why-status busy";
  const ticket = ++whyShown;
  if (!dialog.open) dialog.showModal();
  const scope = new URLSearchParams();
  scope.set("max_pairs", String(MAX_PAIRS));
  if (params.get("collection")) scope.set("collection", params.get("collection"));
  const other = encodeURIComponent(hit.id);
  try {
    let response;
    if (query.file) {
      const form = new FormData();
      form.append("image", query.file, query.file.name);
      response = await api(`/points/${other}/match?${scope}`, { method: "POST", body: form });
    } else {
      response = await api(`/points/${encodeURIComponent(query.id)}/match/${other}?${scope}`);
    }
    const found = await response.json();
    const queryUrl = query.file ? whyUrl(query.file) : imageUrl(query.id, params, WHY_IMAGE_SIZE);
    const [a, b] = await Promise.all([
      loadImage(queryUrl),
      loadImage(imageUrl(hit.id, params, WHY_IMAGE_SIZE)),
    ]);
    if (ticket !== whyShown) return;
    drawMatch(picture, found, a, b, query.name, hitName);
    picture.removeAttribute("hidden");
    describeMatch(dialog.querySelector(".why-legend"), found);
    status.textContent = "";
    status.className = "why-status";
  } catch (error) {
    if (ticket !== whyShown) return;
    status.textContent = `No answer: ${explain(error)}`;
    status.className = "why-status bad";
  }
}

let whyShown = 0;
let whyUrls = []; // the upload's object URL, released when the dialog closes

function whyUrl(file) {
  const url = URL.createObjectURL(file);
  whyUrls.push(url);
  return url;
}

// An image's URL and natural size, once the browser has decoded it.
async function loadImage(url) {
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
  } catch (_) {
    throw new Error("an image could not be shown (it may have changed on disk)");
  }
  return { url, width: image.naturalWidth, height: image.naturalHeight };
}

// Where an image of ``width`` x ``height`` lies in the square cell starting at ``left``.
function cellFor(left, { width, height }) {
  const scale = WHY_CELL / Math.max(width, height);
  const w = width * scale;
  const h = height * scale;
  return { x: left + (WHY_CELL - w) / 2, y: (WHY_CELL - h) / 2, w, h };
}

function drawMatch(picture, found, a, b, nameA, nameB) {
  const cellA = cellFor(0, a);
  const cellB = cellFor(WHY_CELL + WHY_GAP, b);
  picture.setAttribute("viewBox", `0 0 ${2 * WHY_CELL + WHY_GAP} ${WHY_CELL}`);
  picture.setAttribute("aria-label", `${found.pairs.length} matching patches joined between ` +
    `${nameA} (left) and ${nameB} (right), the best matching region of each outlined`);
  for (const [cell, source, side] of [[cellA, a, "a"], [cellB, b, "b"]]) {
    picture.append(svgElement("image", {
      class: `why-image why-image-${side}`,
      href: source.url,
      x: cell.x, y: cell.y, width: cell.w, height: cell.h,
      preserveAspectRatio: "none",
    }));
  }
  const at = (cell, point) => [cell.x + point.x * cell.w, cell.y + point.y * cell.h];
  for (const [cell, box, side] of [[cellA, found.regions.a, "a"], [cellB, found.regions.b, "b"]]) {
    if (!box) continue;
    const [x, y] = at(cell, box);
    picture.append(svgElement("rect", {
      class: `why-region why-region-${side}`, x, y, width: box.w * cell.w, height: box.h * cell.h,
    }));
  }
  const best = found.pairs.length ? found.pairs[0].score : 1;
  found.pairs.forEach((pair, rank) => {
    const [x1, y1] = at(cellA, pair.a);
    const [x2, y2] = at(cellB, pair.b);
    const group = svgElement("g", { class: "why-pair", "data-rank": rank + 1 });
    const title = svgElement("title");
    title.textContent = `#${rank + 1}: similarity ${pair.score.toFixed(3)}`;
    // Stronger pairs are more opaque; the strongest is fully so.
    const strength = 0.35 + 0.65 * Math.max(0, pair.score) / Math.max(best, 1e-6);
    group.append(
      title,
      svgElement("line", { x1, y1, x2, y2, "stroke-opacity": strength.toFixed(3) }),
      svgElement("circle", { cx: x1, cy: y1, r: 4 }),
      svgElement("circle", { cx: x2, cy: y2, r: 4 }),
    );
    picture.append(group);
  });
}

function describeMatch(legend, found) {
  const parts = [];
  if (found.pairs.length) {
    const scores = found.pairs.map((pair) => pair.score);
    parts.push(`${found.pairs.length} pairs of patches that are each other's nearest ` +
      `neighbour (the strongest ${MAX_PAIRS} at most), similarity ` +
      `${Math.min(...scores).toFixed(3)} to ${Math.max(...scores).toFixed(3)}.`);
  } else {
    parts.push("No pair of patches is each other's nearest neighbour.");
  }
  if (found.regions.a && found.regions.b) {
    parts.push(`Outlined: the regions that match best as a whole (similarity ` +
      `${found.regions.score.toFixed(3)}).`);
  }
  parts.push(`Took ${Math.round(found.timings_ms.total)} ms.`);
  legend.textContent = parts.join(" ");
  legend.hidden = false;
}

function wireWhy() {
  const dialog = document.getElementById("why");
  dialog.querySelector(".why-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    whyShown++;
    dialog.querySelector(".why-picture").replaceChildren();
    whyUrls.forEach((url) => URL.revokeObjectURL(url));
    whyUrls = [];
  });
}
