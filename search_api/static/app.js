// dinoseek's search page. Plain JavaScript, no dependencies: everything it shows comes from
// the API of the server that served it. Every path and label is inserted as text, never as
// HTML. The state of a view is in the URL, so back and forward work; an upload's results
// are kept in the history entry (its image cannot be in a URL).
"use strict";

const KEY_STORAGE = "dinoseek.apiKey";
const KEY_COOKIE = "dinoseek_key"; // read by the server for <img> thumbnails only
const THUMBNAIL_SIZE = 256;
const BROWSE_PAGE = 24;
const MAX_RETRY_AFTER_S = 10;

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// -- the API key --------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function setApiKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
  document.cookie = `${KEY_COOKIE}=${encodeURIComponent(key)}; path=/points; SameSite=Strict`;
}

let keyWaiters = [];

function askForKey(reason) {
  const form = $("key-form");
  $("key-reason").textContent = reason;
  form.hidden = false;
  $("key-input").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("key-input").value);
  $("key-input").value = "";
  $("key-form").hidden = true;
  const waiters = keyWaiters;
  keyWaiters = [];
  waiters.forEach((resolve) => resolve());
});

// -- talking to the API -------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// fetch() with the key; a 401 asks for the key and tries again, a 503 is retried once
// after its Retry-After; any other error becomes an ApiError with the server's message.
async function api(path, options = {}, retried = false) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key !== null) headers.set("X-API-Key", key);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    throw new ApiError(0, "unreachable", "The server cannot be reached. Is `dinoseek serve` still running?");
  }
  if (response.ok) return response;
  const detail = await errorDetail(response);
  if (response.status === 401) {
    await askForKey(key === null ? "This server needs an API key." : `The server refused the key: ${detail.message}`);
    return api(path, options, retried);
  }
  if (response.status === 503 && !retried) {
    const after = Math.min(Number(response.headers.get("Retry-After")) || 1, MAX_RETRY_AFTER_S);
    showMessage(`The server is busy (${detail.message}). Trying again in ${after} s…`, "info");
    await sleep(after * 1000);
    hideMessage();
    return api(path, options, true);
  }
  throw new ApiError(response.status, detail.code, detail.message);
}

async function errorDetail(response) {
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") return body.error;
  } catch (_) {
    // not JSON: fall through
  }
  return { code: `http_${response.status}`, message: `${response.status} ${response.statusText}` };
}

async function getJson(path) {
  return (await api(path)).json();
}

// -- messages -----------------------------------------------------------------------------

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
}

function hideMessage() {
  $("message").hidden = true;
}

function explain(error) {
  if (!(error instanceof ApiError)) return `Something went wrong: ${error.message}`;
  const prefix = {
    413: "Too large",
    415: "Not an image dinoseek can read",
    422: "Not usable",
    503: "The server is overloaded or its store is unreachable",
    0: "No connection",
  }[error.status];
  return prefix ? `${prefix}: ${error.message}` : error.message;
}

// -- the state in the URL -----------------------------------------------------------------

const CONTROL_PARAMS = ["top_k", "threshold", "label", "root", "collection", "labels", "collapse"];

function controls() {
  return {
    top_k: $("top-k").value || "12",
    threshold: $("threshold").value,
    label: $("label").value.trim(),
    root: $("root").value.trim(),
    collection: $("collection").value,
    labels: $("with-labels").checked ? "1" : "0",
    collapse: $("collapse").checked ? "1" : "",
    unlabelled: $("unlabelled").checked ? "1" : "",
  };
}

function setControls(params) {
  $("top-k").value = params.get("top_k") || "12";
  $("threshold").value = params.get("threshold") || "";
  $("label").value = params.get("label") || "";
  $("root").value = params.get("root") || "";
  const collection = params.get("collection") || "";
  if (collection && ![...$("collection").options].some((o) => o.value === collection)) {
    $("collection").append(new Option(collection, collection));
  }
  $("collection").value = collection;
  $("with-labels").checked = params.get("labels") !== "0";
  $("collapse").checked = params.get("collapse") === "1";
  $("unlabelled").checked = params.get("unlabelled") === "1";
  showCollectionStatus();
}

function pageParams(view, extra = {}) {
  const params = new URLSearchParams();
  params.set("view", view);
  for (const [name, value] of Object.entries({ ...controls(), ...extra })) {
    if (value !== "" && value !== undefined && value !== null) params.set(name, value);
  }
  if (params.get("labels") === "1") params.delete("labels");
  if (params.get("top_k") === "12") params.delete("top_k");
  return params;
}

// Query parameters for the API from the page's parameters.
function searchQuery(params, { withLabels = true } = {}) {
  const query = new URLSearchParams();
  query.set("top_k", params.get("top_k") || "12");
  for (const name of ["label", "root", "collection"]) {
    if (params.get(name)) query.set(name, params.get(name));
  }
  if (params.get("threshold")) query.set("score_threshold", params.get("threshold"));
  if (params.get("collapse") === "1") query.set("collapse_duplicates", "true");
  if (params.get("region")) {
    query.set("regions", "true");
    query.set("region", params.get("region"));
  }
  if (withLabels) query.set("with_labels", params.get("labels") === "0" ? "false" : "true");
  return query;
}

function collectionQuery(params) {
  const collection = params.get("collection");
  return collection ? `collection=${encodeURIComponent(collection)}` : "";
}

function navigate(params, data = null) {
  history.pushState(data, "", `?${params}`);
  show(params, data);
}

window.addEventListener("popstate", (event) => {
  show(new URLSearchParams(location.search), event.state);
});

// -- rendering ----------------------------------------------------------------------------

function imageUrl(id, params, size) {
  const query = new URLSearchParams();
  if (size) query.set("size", String(size));
  if (params.get("collection")) query.set("collection", params.get("collection"));
  const text = query.toString();
  return `/points/${encodeURIComponent(id)}/image${text ? `?${text}` : ""}`;
}

// ``query`` (when the view has one: {file} of an upload or {id} of a stored image, and its
// name) gives the card a "Why?" button.
function card(result, params, query = null) {
  const item = $("card-template").content.firstElementChild.cloneNode(true);
  const name = result.path || result.id;
  const image = item.querySelector("img");
  image.src = imageUrl(result.id, params, THUMBNAIL_SIZE);
  image.alt = name;
  const thumb = item.querySelector(".thumb");
  thumb.setAttribute("aria-label", `Images similar to ${name}`);
  thumb.addEventListener("click", () => navigate(pageParams("similar", { id: result.id })));
  const score = item.querySelector(".score");
  if (typeof result.score === "number") score.textContent = result.score.toFixed(4);
  else score.remove();
  const label = item.querySelector(".label-tag");
  if (result.label) label.textContent = result.label;
  else label.remove();
  const path = item.querySelector(".path");
  path.querySelector(".path-text").textContent = name;
  path.title = name;
  item.querySelector(".open").href = imageUrl(result.id, params, null);
  item.querySelector(".copy").addEventListener("click", () => copyText(name));
  if (query) {
    const why = item.querySelector(".why");
    why.hidden = false;
    why.setAttribute("aria-label", `Why ${name} matches the query`);
    why.addEventListener("click", () => showWhy(query, result, params));
  }
  if (result.region) drawHitRegion(item, result.region);
  item.dataset.id = result.id;
  return item;
}

// How many results a view shows (a grid alone does not say it).
function resultCount(count, noun = "result") {
  const line = document.createElement("p");
  line.className = "count";
  line.textContent = `${count.toLocaleString()} ${noun}${count === 1 ? "" : "s"}`;
  return line;
}

function grid(results, params, query = null) {
  const list = document.createElement("ul");
  list.className = "grid";
  results.forEach((result) => list.append(card(result, params, query)));
  if (!results.length) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "No neighbours match.";
    list.append(empty);
  }
  return list;
}

function queryCard({ preview, name, labels, nearDuplicate, error }) {
  const article = $("query-template").content.firstElementChild.cloneNode(true);
  const image = article.querySelector(".preview img");
  if (preview) image.src = preview;
  else image.remove();
  image.alt = `Query: ${name}`;
  article.querySelector(".name").textContent = name;
  if (labels && labels.length) {
    const list = article.querySelector(".labels");
    labels.forEach((predicted) => {
      const entry = document.createElement("li");
      const percent = (predicted.probability * 100).toFixed(1);
      entry.textContent = `${predicted.label}: ${percent}% (${labelMethod(predicted)})`;
      list.append(entry);
    });
    article.querySelector(".predicted").hidden = false;
  }
  if (nearDuplicate) {
    const note = article.querySelector(".near-duplicate");
    const where = nearDuplicate.path || nearDuplicate.id;
    note.textContent = `Already in the collection: ${where} (similarity ` +
      `${nearDuplicate.score.toFixed(4)}, at or above ${nearDuplicate.threshold})`;
    note.hidden = false;
  }
  if (error) {
    const box = article.querySelector(".query-error");
    box.textContent = `${name}: ${error.message} (${error.code})`;
    box.hidden = false;
  }
  return article;
}

// What a predicted label came from: a vote is taken over the nearest images of the whole
// collection, whatever the filters and top-k of the results shown.
function labelMethod(predicted) {
  if (predicted.method === "knn") {
    return `knn: vote of the ${predicted.neighbours} nearest images, whatever the filters`;
  }
  return predicted.probe ? `probe ${predicted.probe}` : predicted.method;
}

function setTitle(text) {
  document.title = text ? `${text} · dinoseek` : "dinoseek";
}

// Patch features as colours, beside the query; the checkbox asks for the foreground only.
function attachPca(article, file) {
  const figure = article.querySelector(".pca");
  const image = figure.querySelector("img");
  const pictures = {};
  const load = async (mask) => {
    if (!pictures[mask]) {
      const form = new FormData();
      form.append("image", file, file.name);
      const response = await api(`/embed/pca?mask=${mask}`, { method: "POST", body: form });
      pictures[mask] = URL.createObjectURL(await response.blob());
      viewUrls.push(pictures[mask]);
    }
    image.src = pictures[mask];
    image.alt = mask
      ? `Foreground patches of ${file.name}, coloured by their principal components`
      : `Patch features of ${file.name} on their first three principal components`;
    figure.hidden = false;
  };
  figure.querySelector(".mask").addEventListener("change", (event) => {
    load(event.target.checked).catch((error) => showMessage(explain(error)));
  });
  return load(false);
}

// -- the views ----------------------------------------------------------------------------

let showing = 0; // the newest view wins when several are loading

async function show(params, data) {
  const ticket = ++showing;
  setControls(params);
  hideMessage();
  $("more").hidden = true;
  const view = params.get("view") || "browse";
  const other = (window.dinoseekViews || {})[view]; // views of labels.js
  try {
    if (view === "similar" && params.get("id")) await showSimilar(params, ticket);
    else if (view === "duplicates") await showDuplicates(params, ticket);
    else if (view === "upload") showUpload(params, data);
    else if (other) await other(params, ticket);
    else await showBrowse(params, ticket);
  } catch (error) {
    if (ticket === showing) showMessage(explain(error));
  }
}

// Object URLs of the PCA pictures on screen: released when the view is replaced.
let viewUrls = [];

function replaceView(...nodes) {
  viewUrls.forEach((url) => URL.revokeObjectURL(url));
  viewUrls = [];
  $("view").replaceChildren(...nodes);
}

async function showSimilar(params, ticket) {
  const id = params.get("id");
  const scope = collectionQuery(params);
  const [point, found] = await Promise.all([
    getJson(`/points/${encodeURIComponent(id)}${scope ? `?${scope}` : ""}`),
    getJson(`/points/${encodeURIComponent(id)}/similar?${searchQuery(params, { withLabels: false })}`),
  ]);
  if (ticket !== showing) return;
  const name = point.payload.path || id;
  setTitle(`Similar to ${name}`);
  const article = queryCard({ preview: imageUrl(id, params, THUMBNAIL_SIZE), name });
  replaceView(article, resultCount(found.results.length), grid(found.results, params, { id, name }));
  // A box on a stored image searches with its original file, as an upload would.
  if (collectionHasRegions()) {
    attachBoxDrawing(article, {
      box: null,
      input: service && service.input,
      onBox: (box) =>
        storedFile(id, params, name)
          .then((file) => search([file], { region: box }))
          .catch((error) => showMessage(explain(error))),
      onClear: () => {},
    });
  }
}

async function storedFile(id, params, name) {
  const blob = await (await api(imageUrl(id, params, null))).blob();
  const base = name.split("/").pop() || id;
  return new File([blob], base, { type: blob.type });
}

async function showBrowse(params, ticket) {
  const query = new URLSearchParams();
  query.set("limit", String(BROWSE_PAGE));
  query.set("start", params.get("start") || "random");
  for (const name of ["label", "root", "collection"]) {
    if (params.get(name)) query.set(name, params.get(name));
  }
  if (params.get("unlabelled") === "1") query.set("unlabelled", "true");
  const page = await getJson(`/points?${query}`);
  if (ticket !== showing) return;
  setTitle("Browse");
  const heading = document.createElement("h2");
  heading.textContent =
    params.get("unlabelled") === "1" ? "The images without a label" : "Browse the collection";
  replaceView(heading, resultCount(page.points.length, "image"), grid(page.points, params));
  if (page.next) {
    $("more").hidden = false;
    $("more").onclick = () => navigate(pageParams("browse", { start: page.next }));
  }
}

// The groups of near-duplicates that `dinoseek dedup` marked: the kept image first.
async function showDuplicates(params, ticket) {
  const query = new URLSearchParams();
  query.set("limit", "10");
  if (params.get("start")) query.set("start", params.get("start"));
  if (params.get("collection")) query.set("collection", params.get("collection"));
  const page = await getJson(`/duplicates?${query}`);
  if (ticket !== showing) return;
  setTitle("Duplicates");
  const heading = document.createElement("h2");
  if (page.groups.length) heading.textContent = "Near-duplicates (the kept image first)";
  else heading.append("No near-duplicates are marked: run ", command("dinoseek dedup"), ".");
  const nodes = [heading];
  for (const group of page.groups) {
    const members = [
      group.keep,
      ...group.duplicates.map((d) => ({ ...d, score: d.payload.duplicate_score })),
    ];
    const list = grid(members, params);
    list.classList.add("duplicate-group");
    if (group.reason) {
      const reason = document.createElement("p");
      reason.className = "keep-reason";
      reason.textContent = `Kept: ${group.reason}`;
      nodes.push(reason);
    }
    nodes.push(list);
  }
  replaceView(...nodes);
  if (page.next) {
    $("more").hidden = false;
    $("more").onclick = () => navigate(pageParams("duplicates", { start: page.next }));
  }
}

function command(text) {
  const code = document.createElement("code");
  code.textContent = text;
  return code;
}

function showUpload(params, data) {
  if (!data || !data.groups) {
    setTitle("");
    replaceView();
    showMessage("The query image is not kept across reloads: drop it again.", "info");
    return;
  }
  setTitle(data.groups.length === 1 ? data.groups[0].name : `${data.groups.length} images`);
  const nodes = [];
  for (const group of data.groups) {
    const article = queryCard(group);
    nodes.push(article);
    const file = uploads.get(group.upload);
    const query = file && !group.error ? { file, name: group.name } : null;
    if (group.results) {
      nodes.push(resultCount(group.results.length), grid(group.results, params, query));
    }
    if (file && collectionHasRegions()) {
      attachBoxDrawing(article, {
        box: group.region,
        input: service && service.input,
        onBox: (box) => search([file], { region: box }),
        onClear: () => search([file], { region: null }),
      });
    }
    if (file && !group.error) {
      if (data.groups.length === 1) {
        attachPca(article, file).catch((error) => showMessage(explain(error)));
      } else {
        const button = article.querySelector(".show-pca");
        button.hidden = false;
        button.addEventListener("click", () => {
          button.hidden = true;
          attachPca(article, file).catch((error) => showMessage(explain(error)));
        });
      }
    }
  }
  replaceView(...nodes);
}

// The files of this page's uploads, by a key kept in the history entry (the newest
// MAX_UPLOADS_KEPT: an older entry shows its results without the PCA picture).
const uploads = new Map();
const MAX_UPLOADS_KEPT = 50;
let uploadCount = 0;

function keepUpload(key, file) {
  uploads.set(key, file);
  while (uploads.size > MAX_UPLOADS_KEPT) uploads.delete(uploads.keys().next().value);
}

// ``region``: search one image by that box of it (fractions of its width and height).
async function search(files, { region = null } = {}) {
  files = [...files].filter((file) => file instanceof File);
  if (!files.length) return;
  const params = pageParams("upload", region ? { region: boxText(region) } : {});
  const query = searchQuery(params);
  const form = new FormData();
  const single = files.length === 1;
  files.forEach((file) => form.append(single ? "image" : "images", file, file.name));
  hideMessage();
  const what = region ? `the box drawn on ${files[0].name}` : files[0].name;
  showMessage(single ? `Searching with ${what}…` : `Searching with ${files.length} images…`, "info");
  const ticket = ++showing;
  try {
    const response = await api(single ? `/search?${query}` : `/search/batch?${query}`, {
      method: "POST",
      body: form,
    });
    const body = await response.json();
    const items = single ? [body] : body.items;
    const groups = items.map((item, index) => {
      const file = files[index];
      const upload = `upload-${++uploadCount}`;
      keepUpload(upload, file);
      return {
        upload,
        name: file.name,
        preview: URL.createObjectURL(file),
        results: item.results || null,
        labels: item.labels || null,
        nearDuplicate: item.near_duplicate || null,
        error: item.error || null,
        region: region ? parseBoxText(boxText(region)) : null,
      };
    });
    if (ticket !== showing) return;
    hideMessage();
    navigate(params, { groups });
  } catch (error) {
    if (ticket === showing) showMessage(explain(error));
  }
}

// -- the header ---------------------------------------------------------------------------

async function loadStatus(attempt = 0) {
  let ready;
  try {
    ready = await getJson("/ready");
  } catch (error) {
    $("status-ready").textContent = error instanceof ApiError ? error.message : "unreachable";
    $("status-ready").className = "bad";
    return;
  }
  $("status-ready").textContent = ready.ready ? "ready" : "starting";
  $("status-ready").className = ready.ready ? "good" : "bad";
  if (ready.model === undefined) {
    // A server with a key tells a caller without it only whether it is ready: a route that
    // needs the key asks for it (with the server's own words), then the header is filled.
    if (attempt > 5) return;
    await getJson("/collections");
    return loadStatus(attempt + 1);
  }
  $("status-model").textContent = ready.model;
  $("status-device").textContent = ready.device;
  service = { collection: ready.collection, points: ready.points, input: ready.input || null };
  showCollectionStatus();
  showWatch(ready.watch);
  await loadCollections(ready.collection);
}

// With `dinoseek serve --watch`, the folder watcher's state, and the collection's size kept
// current while it changes (one /ready every few seconds).
const WATCH_REFRESH_MS = 3000;
let watchTimer = null;

function describeWatch(watch) {
  let text = watch.phase === "pending" ? `${watch.pending.toLocaleString()} pending` : watch.phase;
  if (watch.phase === "indexing" && watch.pending) {
    text += ` (${watch.pending.toLocaleString()} more pending)`;
  }
  if (watch.last_error) text += `; last pass failed: ${watch.last_error}`;
  return text;
}

function showWatch(watch) {
  $("status-watch-item").hidden = !watch;
  if (!watch) return;
  const line = $("status-watch");
  line.textContent = describeWatch(watch);
  line.className = watch.last_error || watch.phase === "stopped" ? "bad" : "good";
  line.title = `${watch.folders.join(", ")} (${watch.mode}); passes: ${watch.passes}`;
  if (watchTimer === null) watchTimer = setInterval(refreshWatch, WATCH_REFRESH_MS);
}

async function refreshWatch() {
  try {
    const ready = await getJson("/ready");
    if (service !== null) service.points = ready.points;
    const listed = listedCollections.find((collection) => collection.name === ready.collection);
    if (listed) listed.points = ready.points;
    showCollectionStatus();
    showWatch(ready.watch);
  } catch {
    // The next refresh tries again; loadStatus reports an unreachable server.
  }
}

// The service's collection and its size (from /ready), and every collection's (/collections).
let service = null;
let listedCollections = [];

// The header names the collection the page shows, the service's or the one picked.
function showCollectionStatus() {
  if (service === null) return;
  const picked = $("collection").value;
  const name = picked || service.collection;
  const listed = listedCollections.find((collection) => collection.name === name);
  const points = listed ? listed.points : picked ? undefined : service.points;
  $("status-collection").textContent = name;
  if (points === null) {
    $("status-points").textContent = picked ? "in use by another process" : "no collection yet";
  } else {
    $("status-points").textContent = points === undefined ? "…" : points.toLocaleString();
  }
}

// Whether the collection shown holds region vectors (a box can be drawn on a query).
function collectionHasRegions() {
  if (service === null) return false;
  const name = $("collection").value || service.collection;
  const listed = listedCollections.find((collection) => collection.name === name);
  return Boolean(listed && listed.regions);
}

async function loadCollections(serviceCollection) {
  const select = $("collection");
  const chosen = new URLSearchParams(location.search).get("collection") || "";
  const listed = await getJson("/collections");
  listedCollections = listed.collections;
  const options = [new Option(`${serviceCollection} (the service's)`, "")];
  for (const collection of listed.collections) {
    if (collection.name !== serviceCollection) options.push(new Option(collection.name, collection.name));
  }
  select.replaceChildren(...options);
  select.value = chosen;
  showCollectionStatus();
  loadLabels().catch(() => {});
}

async function loadLabels() {
  const scope = collectionQuery(new URLSearchParams(location.search));
  const probes = await getJson(`/probes${scope ? `?${scope}` : ""}`);
  const chosen = probes.probes.find((probe) => probe.name === probes.default);
  const list = $("label-list");
  list.replaceChildren(...(chosen ? chosen.classes : []).map((label) => new Option(label)));
}

// -- copying ------------------------------------------------------------------------------

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  showMessage(`Copied: ${text}`, "info");
}

// -- input --------------------------------------------------------------------------------

function wireInput() {
  const drop = $("drop");
  const file = $("file");
  file.addEventListener("change", () => {
    search(file.files);
    file.value = "";
  });
  drop.addEventListener("keydown", (event) => {
    if (event.target === drop && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      file.click();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    search(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData ? event.clipboardData.files : [];
    if (files.length) {
      event.preventDefault();
      search(files);
    }
  });
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("browse").addEventListener("click", () => navigate(pageParams("browse", { start: "random" })));
  $("duplicates").addEventListener("click", () => navigate(pageParams("duplicates")));
  $("collection").addEventListener("change", () => {
    const params = new URLSearchParams(location.search);
    navigate(pageParams(params.get("view") === "similar" ? "browse" : params.get("view") || "browse"));
    loadLabels().catch(() => {});
  });
  // A change of a filter reruns a view that needs no upload.
  for (const id of ["top-k", "threshold", "label", "root", "with-labels", "collapse"]) {
    $(id).addEventListener("change", () => {
      const params = new URLSearchParams(location.search);
      const view = params.get("view") || "browse";
      if (view === "upload") return;
      const extra = view === "similar" ? { id: params.get("id") } : {};
      navigate(pageParams(view, extra));
    });
  }
}

async function start() {
  wireInput();
  wireWhy();
  const params = new URLSearchParams(location.search);
  setControls(params);
  await loadStatus().catch((error) => showMessage(explain(error)));
  // An image dropped while the page was loading is the view: the first one must not
  // replace its results (it would, being newer).
  if (showing === 0) show(new URLSearchParams(location.search), history.state);
}

start();
