// Sessions and users over time: an inline SVG bar chart, no library.
//
// drawChart(container, series, {bucketMs, formatTick, formatRange}) where series is
// [{start: ISO string, sessions: n, users: n}, ...] (the stats API's buckets).

const SVG = "http://www.w3.org/2000/svg";
const HEIGHT = 240;
const MARGIN = { top: 14, right: 14, bottom: 30, left: 40 };

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// A round upper bound and tick step for counts (integers only).
function scale(max) {
  if (max <= 4) return { top: Math.max(max, 1), step: 1 };
  const raw = max / 4;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw && Number.isInteger(s)) || 10 * magnitude;
  return { top: Math.ceil(max / step) * step, step };
}

export function drawChart(container, series, options) {
  const { bucketMs, formatTick, formatRange } = options;
  container.replaceChildren();
  const width = Math.max(320, container.clientWidth || 800);
  const innerW = width - MARGIN.left - MARGIN.right;
  const innerH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${HEIGHT}`, width, height: HEIGHT, class: "chart-svg",
    role: "img", "aria-label": "Sessions started and unique users per interval",
  });
  container.append(svg);

  const n = series.length;
  const max = Math.max(0, ...series.map((b) => Math.max(b.sessions, b.users)));
  const { top, step } = scale(max);
  const band = innerW / Math.max(n, 1);
  const x = (i) => MARGIN.left + i * band;
  const y = (v) => MARGIN.top + innerH - (v / top) * innerH;

  const grid = el("g", { class: "chart-grid" });
  for (let v = 0; v <= top + 1e-9; v += step) {
    grid.append(el("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(v), y2: y(v) }));
    grid.append(el("text", { x: MARGIN.left - 8, y: y(v) + 4, "text-anchor": "end", class: "chart-label" }, String(v)));
  }
  svg.append(grid);

  // per bucket two bars side by side: sessions started, unique users among them
  const bars = el("g", { class: "chart-bars" });
  const barW = Math.max(1, Math.min(18, band * 0.36));
  const gap = Math.min(2, barW / 4);
  const bar = (cls, value, left) => {
    if (value <= 0) return;
    const h = Math.max(1, innerH * (value / top));
    bars.append(el("rect", { class: cls, x: left, y: MARGIN.top + innerH - h, width: barW, height: h, rx: Math.min(2.5, barW / 3) }));
  };
  series.forEach((b, i) => {
    const center = x(i) + band / 2;
    bar("bar-sessions", b.sessions, center - barW - gap / 2);
    bar("bar-users", b.users, center + gap / 2);
  });
  svg.append(bars);

  const axis = el("g", { class: "chart-axis" });
  axis.append(el("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: MARGIN.top + innerH, y2: MARGIN.top + innerH }));
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(innerW / 90))));
  series.forEach((b, i) => {
    if (i % every === 0) {
      axis.append(el("text", { x: x(i) + band / 2, y: HEIGHT - 8, "text-anchor": "middle", class: "chart-label" }, formatTick(Date.parse(b.start))));
    }
  });
  svg.append(axis);

  if (max === 0) {
    svg.append(el("text", { x: MARGIN.left + innerW / 2, y: MARGIN.top + innerH / 2, "text-anchor": "middle", class: "chart-empty" }, "No sessions started in this range"));
  }

  // hover: one invisible band per bucket, a tooltip above it
  const tip = document.createElement("div");
  tip.className = "chart-tip";
  tip.hidden = true;
  container.append(tip);
  const hover = el("g", { class: "chart-hover" });
  const marker = el("rect", { class: "chart-marker", x: 0, y: MARGIN.top, width: band, height: innerH, visibility: "hidden" });
  svg.insertBefore(marker, bars);
  series.forEach((b, i) => {
    const zone = el("rect", { x: x(i), y: MARGIN.top, width: band, height: innerH, fill: "transparent" });
    zone.addEventListener("mouseenter", () => {
      marker.setAttribute("x", x(i));
      marker.setAttribute("visibility", "visible");
      const startMs = Date.parse(b.start);
      tip.replaceChildren();
      const head = document.createElement("strong");
      head.textContent = formatRange(startMs, startMs + bucketMs);
      const body = document.createElement("span");
      body.textContent = `${b.sessions} session${b.sessions === 1 ? "" : "s"} · ${b.users} user${b.users === 1 ? "" : "s"}`;
      tip.append(head, body);
      tip.hidden = false;
      const left = Math.min(Math.max(x(i) + band / 2, 80), width - 80);
      tip.style.left = `${left}px`;
      tip.style.top = `${Math.max(0, y(Math.max(b.sessions, b.users)) - 10)}px`;
    });
    hover.append(zone);
  });
  hover.addEventListener("mouseleave", () => {
    tip.hidden = true;
    marker.setAttribute("visibility", "hidden");
  });
  svg.append(hover);
}
