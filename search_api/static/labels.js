// Labelling on dinoseek's page: the collection by clusters, selecting images (click,
// shift-click, a whole cluster), giving them a label, training the probe from the page, the
// images it is least sure about, and its labels on every card of an unlabelled image.
//
// Loaded before app.js: it registers its views (window.dinoseekViews) and uses app.js's
// helpers (api, getJson, grid, navigate, ...) only once the page runs. Every label and path
// is inserted as text, never as HTML.
"use strict";

const PROBE = "default";
const CLUSTER_PAGE = 48;
const NEXT_BATCH = 12;
const MOSAIC = 4;
const MOSAIC_SIZE = 128;
const MAX_LABEL_IDS = 1000;
const MAX_PREDICTION_IDS = 200;
const TRAIN_POLL_MS = 1000;

window.dinoseekViews = {
  clusters: showClusters,
  cluster: showCluster,
  next: showNext,
};

const byId = (id) => document.getElementById(id);

// -- the collection by clusters -----------------------------------------------------------

async function showClusters(params, ticket) {
  const scope = collectionQuery(params);
  const response = await api(`/clusters${scope ? `?${scope}` : ""}`);
  const body = await response.json();
  if (ticket !== showing) return;
  setTitle("Clusters");
  if (response.status === 202) {
    waitForClusters(response, params, ticket);
    return;
  }
  const heading = document.createElement("h2");
  heading.textContent = "The collection by clusters";
  const about = document.createElement("p");
  about.className = "count";
  about.textContent =
    `${body.points.toLocaleString()} images in ${body.clusters.length} clusters` +
    (body.recomputing ? " (the collection changed: new clusters are on their way)" : "");
  const tiles = clusterTiles(body.clusters, body.version, params, "Cluster ");
  replaceView(heading, about, tiles);
}

// The first clusters of a collection are computed in the background: ask again after the
// server's Retry-After, while this view is still the one shown.
function waitForClusters(response, params, ticket) {
  const after = Math.min(Number(response.headers.get("Retry-After")) || 1, MAX_RETRY_AFTER_S);
  const note = document.createElement("p");
  note.className = "count";
  note.textContent = "Computing the clusters of this collection…";
  replaceView(note);
  setTimeout(() => {
    if (ticket === showing) show(params, history.state);
  }, after * 1000);
}

// Tiles named prefix + their rank: "Cluster 2", and under it "Cluster 2.1".
function clusterTiles(clusters, version, params, prefix) {
  const list = document.createElement("ul");
  list.className = "grid clusters";
  clusters.forEach((cluster, index) => list.append(clusterTile(cluster, index, version, params, prefix)));
  return list;
}

function clusterTile(cluster, index, version, params, prefix) {
  const tile = byId("cluster-template").content.firstElementChild.cloneNode(true);
  const name = `${prefix}${index + 1}`;
  tile.dataset.cluster = String(cluster.id);
  const open = tile.querySelector(".cluster-open");
  open.setAttribute("aria-label", `Open ${name.toLowerCase()} (${cluster.size} images)`);
  open.addEventListener("click", () =>
    navigate(pageParams("cluster", { cluster: String(cluster.id), version, name })),
  );
  const mosaic = tile.querySelector(".mosaic");
  cluster.representatives.slice(0, MOSAIC).forEach((id) => {
    const image = document.createElement("img");
    image.src = imageUrl(id, params, MOSAIC_SIZE);
    image.alt = "";
    image.loading = "lazy";
    mosaic.append(image);
  });
  tile.querySelector(".cluster-name").textContent = name;
  const children = cluster.children.length;
  tile.querySelector(".cluster-size").textContent =
    `${cluster.size.toLocaleString()} image${cluster.size === 1 ? "" : "s"}` +
    (children > 1 ? ` · ${children} smaller clusters` : "");
  const pick = tile.querySelector(".pick input");
  pick.checked = selection.cluster !== null && selection.cluster.id === cluster.id;
  pick.addEventListener("change", () => {
    if (pick.checked) selectCluster({ id: cluster.id, version, size: cluster.size, name });
    else clearSelection();
  });
  return tile;
}

async function showCluster(params, ticket) {
  const query = new URLSearchParams();
  query.set("limit", String(CLUSTER_PAGE));
  for (const name of ["version", "offset", "collection"]) {
    if (params.get(name)) query.set(name, params.get(name));
  }
  let page;
  try {
    page = await getJson(`/clusters/${encodeURIComponent(params.get("cluster") || "")}?${query}`);
  } catch (error) {
    if (error instanceof ApiError && error.code === "clusters_changed" && ticket === showing) {
      navigate(pageParams("clusters"));
      showMessage("The clusters were computed again (the collection changed): here are the new ones.", "info");
      return;
    }
    throw error;
  }
  if (ticket !== showing) return;
  if (page.status === "computing") {
    navigate(pageParams("clusters"));
    return;
  }
  const name = params.get("name") || `Cluster ${page.cluster.id}`;
  setTitle(name);
  const heading = document.createElement("h2");
  heading.textContent = `${name}: ${page.cluster.size.toLocaleString()} images, the most typical first`;
  const back = document.createElement("button");
  back.type = "button";
  back.textContent = "All clusters";
  back.addEventListener("click", () => navigate(pageParams("clusters")));
  const whole = document.createElement("button");
  whole.type = "button";
  whole.className = "select-cluster";
  whole.textContent = `Select all ${page.cluster.size.toLocaleString()} images of this cluster`;
  whole.addEventListener("click", () =>
    selectCluster({ id: page.cluster.id, version: page.version, size: page.cluster.size, name }),
  );
  const tools = document.createElement("p");
  tools.className = "cluster-tools";
  tools.append(back, whole);
  const nodes = [heading, tools];
  if (page.children.length > 1) {
    const sub = document.createElement("h3");
    sub.textContent = "Its smaller clusters";
    nodes.push(sub, clusterTiles(page.children, page.version, params, `${name}.`));
  }
  const shown = page.offset + page.members.length;
  const count = resultCount(page.members.length, "image");
  count.textContent += page.cluster.size > page.members.length
    ? ` (${page.offset + 1}–${shown} of ${page.cluster.size.toLocaleString()})`
    : "";
  nodes.push(count, grid(page.members, params));
  replaceView(...nodes);
  if (page.next !== null) {
    byId("more").hidden = false;
    byId("more").onclick = () =>
      navigate(pageParams("cluster", {
        cluster: params.get("cluster"), version: page.version, name, offset: String(page.next),
      }));
  }
}

// -- label next: the images the probe is least sure about ---------------------------------

async function showNext(params, ticket) {
  const query = new URLSearchParams();
  query.set("limit", String(NEXT_BATCH));
  if (params.get("collection")) query.set("collection", params.get("collection"));
  let found;
  try {
    found = await getJson(`/probes/${PROBE}/uncertain?${query}`);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    if (ticket !== showing) return;
    const note = document.createElement("p");
    note.className = "empty";
    note.textContent =
      "There is no probe yet: label a few images of each kind (browse by Clusters, select, " +
      "Apply label), then Train probe.";
    replaceView(note);
    return;
  }
  if (ticket !== showing) return;
  setTitle("Label next");
  const heading = document.createElement("h2");
  heading.textContent = found.points.length
    ? `Label next: the ${found.points.length} images probe ${found.probe} is least sure about`
    : "Every image has a label";
  const about = document.createElement("p");
  about.className = "count";
  about.textContent =
    `Chosen among ${found.candidates.toLocaleString()} unlabelled images by the margin ` +
    "between the probe's two most probable labels (0: a toss-up).";
  const list = grid(found.points.map((item) => item.point), params);
  found.points.forEach((item, index) => {
    const margin = document.createElement("span");
    margin.className = "margin";
    margin.textContent = `margin ${item.margin >= 0.9995 ? ">0.999" : item.margin.toFixed(3)}`;
    list.children[index].dataset.margin = String(item.margin);
    list.children[index].querySelector(".meta").prepend(margin);
  });
  replaceView(heading, about, list);
}

// -- selection ------------------------------------------------------------------------------

const selection = { ids: new Set(), cluster: null, last: null };

function selectCluster(cluster) {
  selection.ids.clear();
  selection.cluster = cluster;
  syncSelection();
}

function clearSelection() {
  selection.ids.clear();
  selection.cluster = null;
  selection.last = null;
  syncSelection();
}

function cardsShown() {
  return [...byId("view").querySelectorAll(".card")];
}

// A click selects or leaves one image; a shift-click does the same to every image from the
// last one clicked.
function pickCard(item, checked, range) {
  selection.cluster = null;
  const cards = cardsShown();
  const from = range && selection.last ? cards.indexOf(selection.last) : -1;
  const to = cards.indexOf(item);
  const chosen = from >= 0 ? cards.slice(Math.min(from, to), Math.max(from, to) + 1) : [item];
  chosen.forEach((card) => {
    if (checked) selection.ids.add(card.dataset.id);
    else selection.ids.delete(card.dataset.id);
  });
  selection.last = item;
  syncSelection();
}

function syncSelection() {
  for (const card of cardsShown()) {
    const chosen = selection.ids.has(card.dataset.id);
    card.classList.toggle("selected", chosen);
    const box = card.querySelector(".pick input");
    if (box) box.checked = chosen;
  }
  for (const tile of byId("view").querySelectorAll(".cluster")) {
    const chosen = selection.cluster !== null && String(selection.cluster.id) === tile.dataset.cluster;
    tile.classList.toggle("selected", chosen);
    tile.querySelector(".pick input").checked = chosen;
  }
  const count = selection.cluster
    ? `${selection.cluster.name} selected: ${selection.cluster.size.toLocaleString()} images`
    : `${selection.ids.size} image${selection.ids.size === 1 ? "" : "s"} selected`;
  byId("selection-count").textContent = count;
  byId("label-bar").hidden = !selection.cluster && selection.ids.size === 0;
}

// -- giving labels --------------------------------------------------------------------------

async function applyLabel(label) {
  const params = new URLSearchParams(location.search);
  const scope = collectionQuery(params);
  const suffix = scope ? `?${scope}` : "";
  let labelled = 0;
  if (selection.cluster) {
    const { id, version } = selection.cluster;
    const body = await postJson(`/clusters/${id}/labels${suffix}`, { version, label });
    labelled = body.labelled;
  } else {
    const ids = [...selection.ids];
    for (let start = 0; start < ids.length; start += MAX_LABEL_IDS) {
      const chunk = ids.slice(start, start + MAX_LABEL_IDS);
      labelled += (await postJson(`/points/labels${suffix}`, { ids: chunk, label })).labelled;
    }
  }
  const whole = selection.cluster !== null;
  const ids = new Set(selection.ids);
  clearSelection();
  if (whole) show(new URLSearchParams(location.search), history.state);
  else cardsShown().filter((card) => ids.has(card.dataset.id)).forEach((card) => setCardLabel(card, label));
  if (label) rememberLabel(label);
  const what = label === null ? "without a label now" : `labelled “${label}”`;
  showMessage(`${labelled.toLocaleString()} image${labelled === 1 ? "" : "s"} ${what}.`, "info");
}

async function postJson(path, body) {
  const response = await api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.json();
}

function setCardLabel(card, label) {
  const meta = card.querySelector(".meta");
  let tag = meta.querySelector(".label-tag");
  card.querySelector(".predicted-tag")?.remove();
  if (label === null) {
    tag?.remove();
    card.dataset.unlabelled = "1";
    requestPredictions();
    return;
  }
  if (!tag) {
    tag = document.createElement("span");
    tag.className = "label-tag";
    meta.insertBefore(tag, meta.querySelector(".path"));
  }
  tag.textContent = label;
  delete card.dataset.unlabelled;
}

function rememberLabel(label) {
  const list = byId("label-list");
  if (![...list.options].some((option) => option.value === label)) list.append(new Option(label));
}

// -- the probe's labels on the cards of unlabelled images -----------------------------------

let predictionsPending = false;

// Cards appear in every view; each new one gets a check box, and those of unlabelled images
// the probe's label (asked for together, once the view is drawn).
function decorateCards() {
  for (const card of cardsShown()) {
    if (card.dataset.decorated) continue;
    card.dataset.decorated = "1";
    if (!card.querySelector(".label-tag")) card.dataset.unlabelled = "1";
    const pick = document.createElement("label");
    pick.className = "pick";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.setAttribute("aria-label", `Select ${card.querySelector(".path-text").textContent}`);
    box.addEventListener("click", (event) => pickCard(card, box.checked, event.shiftKey));
    pick.append(box, " Select");
    card.querySelector(".meta").prepend(pick); // its own place: the actions line has no room left
  }
  syncSelection();
  requestPredictions();
}

function requestPredictions() {
  if (predictionsPending) return;
  predictionsPending = true;
  queueMicrotask(() => {
    predictionsPending = false;
    loadPredictions().catch((error) => showMessage(explain(error)));
  });
}

async function loadPredictions() {
  const cards = cardsShown().filter(
    (card) => card.dataset.unlabelled && !card.querySelector(".predicted-tag") && !card.dataset.asked,
  );
  if (!cards.length) return;
  cards.forEach((card) => (card.dataset.asked = "1"));
  const params = new URLSearchParams(location.search);
  for (let start = 0; start < cards.length; start += MAX_PREDICTION_IDS) {
    const chunk = cards.slice(start, start + MAX_PREDICTION_IDS);
    const query = new URLSearchParams();
    chunk.forEach((card) => query.append("ids", card.dataset.id));
    if (params.get("collection")) query.set("collection", params.get("collection"));
    const found = await getJson(`/predictions?${query}`);
    if (found.probe === null) return;
    const byPoint = new Map(found.predictions.map((item) => [item.id, item.labels[0]]));
    for (const card of chunk) {
      const predicted = byPoint.get(card.dataset.id);
      if (!predicted || !card.isConnected || !card.dataset.unlabelled) continue;
      const tag = document.createElement("span");
      tag.className = "predicted-tag";
      tag.title = `predicted by probe ${found.probe}; not a label yet`;
      tag.textContent = `${predicted.label}? ${probability(predicted.probability)}`;
      card.querySelector(".meta").insertBefore(tag, card.querySelector(".path"));
    }
  }
}

// A probability as a percentage that never rounds up to a certainty it is not.
function probability(value) {
  if (value >= 0.9995) return ">99.9%";
  return `${(value * 100).toFixed(value >= 0.99 ? 1 : 0)}%`;
}

function refreshPredictions() {
  for (const card of cardsShown()) {
    card.querySelector(".predicted-tag")?.remove();
    delete card.dataset.asked;
  }
  requestPredictions();
}

// -- training the probe ---------------------------------------------------------------------

async function train(minPerClass) {
  const params = new URLSearchParams(location.search);
  const scope = collectionQuery(params);
  const path = `/probes/${PROBE}/train${scope ? `?${scope}` : ""}`;
  await postJson(path, { min_per_class: minPerClass });
  byId("train-status").textContent = `Training probe ${PROBE} on the labels now…`;
  byId("train-status").className = "busy";
  const status = await trainingDone(scope);
  showProbe(status);
  if (status.status === "ready") {
    refreshPredictions();
    loadLabels().catch(() => {});
  }
}

async function trainingDone(scope) {
  for (;;) {
    const status = await getJson(`/probes/${PROBE}${scope ? `?${scope}` : ""}`);
    if (status.status !== "training") return status;
    await sleep(TRAIN_POLL_MS);
  }
}

async function loadProbe() {
  const scope = collectionQuery(new URLSearchParams(location.search));
  try {
    showProbe(await getJson(`/probes/${PROBE}${scope ? `?${scope}` : ""}`));
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    byId("train-status").textContent = "No probe yet.";
    byId("train-status").className = "";
    byId("probe-report").hidden = true;
  }
}

function showProbe(status) {
  const line = byId("train-status");
  if (status.status === "failed") {
    line.textContent = `Training failed: ${status.error.message}`;
    line.className = "bad";
  } else if (status.status === "training") {
    line.textContent = `Probe ${PROBE} is training…`;
    line.className = "busy";
  } else {
    line.textContent = `Probe ${PROBE} is ready: searches, /classify and the cards use it.`;
    line.className = "good";
  }
  const box = byId("probe-report");
  if (!status.report) {
    box.hidden = true;
    return;
  }
  const title = document.createElement("summary");
  title.textContent = `The training report of probe ${PROBE}`;
  box.replaceChildren(title, ...reportNodes(status.report, status.probe));
  box.hidden = false;
}

// The training report: what the numbers were measured on, per class, and the confusions.
function reportNodes(report, probe) {
  const percent = (value) => `${(value * 100).toFixed(0)}%`;
  const summary = document.createElement("p");
  summary.textContent =
    `Held-out accuracy ${percent(report.accuracy)} on ${report.holdout_size} labelled images ` +
    `kept out of training (${percent(report.holdout_fraction)} of each class, at least one); ` +
    `trained on ${report.train_size} labelled images of ${report.classes.length} classes` +
    (probe && probe.trained_at ? ` at ${probe.trained_at}` : "") +
    `. ${report.unlabelled_count.toLocaleString()} unlabelled images were not used.`;
  const nodes = [summary];
  if (report.holdout_size < 5 * report.classes.length) {
    const caution = document.createElement("p");
    caution.className = "caution";
    caution.textContent =
      "Few held-out images: each one moves the accuracy a lot. Label more for a firmer number.";
    nodes.push(caution);
  }
  if (report.skipped_classes.length) {
    const skipped = document.createElement("p");
    skipped.textContent =
      `Left out (fewer than ${report.min_per_class} labelled images): ` +
      report.skipped_classes.map((entry) => `${entry.label} (${entry.count})`).join(", ");
    nodes.push(skipped);
  }
  nodes.push(confusionTable(report));
  return nodes;
}

function confusionTable(report) {
  const table = document.createElement("table");
  table.className = "confusion";
  const caption = document.createElement("caption");
  caption.textContent = "Held-out images by true label (rows) and predicted label (columns)";
  const head = table.createTHead().insertRow();
  for (const title of ["label", "trained on", "held out", "accuracy", ...report.classes]) {
    const cell = document.createElement("th");
    cell.scope = "col";
    cell.textContent = title;
    head.append(cell);
  }
  const body = table.createTBody();
  report.per_class.forEach((entry, row) => {
    const line = body.insertRow();
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = entry.label;
    line.append(name);
    const values = [entry.train_count, entry.holdout_count, `${(entry.accuracy * 100).toFixed(0)}%`];
    values.concat(report.confusion[row]).forEach((value, column) => {
      const cell = line.insertCell();
      cell.textContent = String(value);
      if (column === row + 3 && value) cell.className = "hit";
      else if (column > 2 && value) cell.className = "miss";
    });
  });
  table.prepend(caption);
  return table;
}

// -- input ----------------------------------------------------------------------------------

function wireLabelling() {
  byId("clusters").addEventListener("click", () => navigate(pageParams("clusters")));
  byId("label-next").addEventListener("click", () => navigate(pageParams("next")));
  // The filter is the browse view's: ticked anywhere, it browses the unlabelled images.
  byId("unlabelled").addEventListener("change", () => navigate(pageParams("browse")));
  byId("label-bar").addEventListener("submit", (event) => {
    event.preventDefault();
    const label = byId("label-text").value.trim();
    if (!label) return;
    applyLabel(label).catch((error) => showMessage(explain(error)));
  });
  byId("unlabel").addEventListener("click", () => {
    applyLabel(null).catch((error) => showMessage(explain(error)));
  });
  byId("clear-selection").addEventListener("click", clearSelection);
  byId("train-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const minPerClass = Number(byId("min-per-class").value) || 3;
    train(minPerClass).catch((error) => {
      byId("train-status").textContent = "";
      showMessage(explain(error));
    });
  });
  new MutationObserver(decorateCards).observe(byId("view"), { childList: true, subtree: true });
  window.addEventListener("load", () => loadProbe().catch(() => {}));
}

wireLabelling();
