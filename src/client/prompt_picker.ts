/**
 * The picker's logic, apart from any terminal: a pure state machine
 * (`reducePicker(items, state, event) → state`) and a pure renderer
 * (`renderPicker(items, state, view) → [prompt line, body]`). The terminal
 * driver in prompts.ts only turns keypresses into events and prints what
 * `renderPicker` returns, so tests can check both without a TTY.
 */
import { visible } from "../common/text.ts";
import type { MachineView } from "./relay_client.ts";
import { formatAge } from "../common/duration.ts";

/** One row of a picker. */
export interface PickItem<T> {
  value: T;
  /** Cells shown as aligned columns; the first is the item's name. */
  cells: string[];
  /** Text the filter searches (case-insensitive); defaults to the cells. */
  search?: string;
  /** Why the item cannot be picked (e.g. "offline"): shown dimmed, skipped by the cursor. */
  disabled?: string;
  /** Shown after the pick; defaults to the first cell. */
  short?: string;
}

export interface PickerState {
  /** The filter text, as typed. */
  query: string;
  /** Index into `filterItems(items, query)`; -1 when nothing there can be picked. */
  active: number;
}

export type PickerEvent =
  | { type: "query"; text: string }
  | { type: "move"; by: number }
  | { type: "first" }
  | { type: "last" };

/** The items matching `query`: every whitespace-separated term must occur in the item. */
export function filterItems<T>(items: readonly PickItem<T>[], query: string): PickItem<T>[] {
  const terms = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (terms.length === 0) return [...items];
  return items.filter((it) => {
    const hay = (it.search ?? it.cells.join(" ")).toLowerCase();
    return terms.every((t) => hay.includes(t));
  });
}

function firstSelectable<T>(list: readonly PickItem<T>[]): number {
  return list.findIndex((it) => !it.disabled);
}

export function initialPickerState<T>(items: readonly PickItem<T>[], query = ""): PickerState {
  return { query, active: firstSelectable(filterItems(items, query)) };
}

/**
 * The next state. A new query puts the cursor on the first pickable match;
 * moves skip disabled items and stop at the ends (no wrap-around).
 */
export function reducePicker<T>(
  items: readonly PickItem<T>[],
  state: PickerState,
  event: PickerEvent,
): PickerState {
  if (event.type === "query") {
    if (event.text === state.query) return state;
    return initialPickerState(items, event.text);
  }
  const list = filterItems(items, state.query);
  const pickable = list.map((it, i) => (it.disabled ? -1 : i)).filter((i) => i >= 0);
  if (pickable.length === 0) return { ...state, active: -1 };
  if (event.type === "first") return { ...state, active: pickable[0] };
  if (event.type === "last") return { ...state, active: pickable[pickable.length - 1] };
  let pos = pickable.indexOf(state.active);
  if (pos < 0) pos = 0;
  const next = Math.max(0, Math.min(pickable.length - 1, pos + event.by));
  return { ...state, active: pickable[next] };
}

/** The item under the cursor, if it can be picked. */
export function selectedItem<T>(
  items: readonly PickItem<T>[],
  state: PickerState,
): PickItem<T> | undefined {
  const it = filterItems(items, state.query)[state.active];
  return it && !it.disabled ? it : undefined;
}

/** Text styles; `plainStyle` for tests, `ansiStyle` on a terminal. */
export interface PickerStyle {
  prefix(done: boolean): string;
  message(s: string): string;
  highlight(s: string): string;
  dim(s: string): string;
  answer(s: string): string;
  warn(s: string): string;
}

export const plainStyle: PickerStyle = {
  prefix: (done) => (done ? "✔" : "?"),
  message: (s) => s,
  highlight: (s) => s,
  dim: (s) => s,
  answer: (s) => s,
  warn: (s) => s,
};

const sgr = (open: number, close: number) => (s: string) => `\x1b[${open}m${s}\x1b[${close}m`;
const bold = sgr(1, 22);
const dim = sgr(2, 22);
const cyan = sgr(36, 39);
const green = sgr(32, 39);
const blue = sgr(34, 39);
const yellow = sgr(33, 39);

export const ansiStyle: PickerStyle = {
  prefix: (done) => (done ? green("✔") : blue("?")),
  message: bold,
  highlight: cyan,
  dim,
  answer: cyan,
  warn: yellow,
};

export interface PickerView {
  message: string;
  /** Column headers, aligned with the items' cells. */
  headers?: string[];
  /** Terminal width; rows are cut to fit so nothing wraps. */
  width?: number;
  /** Most rows shown at once (default 10). */
  pageSize?: number;
  /** Verb for Enter in the help line (default "select"). */
  action?: string;
  /** What the list is of, for "no machines match …" (default "items"). */
  noun?: string;
  style?: PickerStyle;
}

/** Display width of plain text (every code point counts 1; names are mostly ASCII). */
function textWidth(s: string): number {
  return [...s].length;
}

function cut(s: string, width: number): string {
  const cps = [...s];
  if (cps.length <= width) return s;
  return width <= 0 ? "" : cps.slice(0, width - 1).join("") + "…";
}

function pad(s: string, width: number): string {
  return s + " ".repeat(Math.max(0, width - textWidth(s)));
}

/** Column widths over all items (not just the matches) so columns stay put while filtering. */
function columnWidths<T>(items: readonly PickItem<T>[], headers: string[] | undefined): number[] {
  const n = Math.max(headers?.length ?? 0, ...items.map((it) => it.cells.length));
  const widths: number[] = [];
  for (let i = 0; i < n; i++) {
    widths.push(Math.max(
      textWidth(headers?.[i] ?? ""),
      ...items.map((it) => textWidth(visible(it.cells[i] ?? ""))),
    ));
  }
  return widths;
}

function formatRow(raw: string[], widths: number[], maxWidth: number): string {
  const cells = raw.map(visible); // names and commands others chose
  const line = widths.map((
    w,
    i,
  ) => (i === widths.length - 1 ? cells[i] ?? "" : pad(cells[i] ?? "", w)))
    .join("  ").trimEnd();
  return cut(line, maxWidth);
}

/** First row of the visible window: keeps the cursor roughly centred. */
export function pageStart(total: number, active: number, pageSize: number): number {
  if (total <= pageSize) return 0;
  const a = Math.max(0, active);
  return Math.max(0, Math.min(total - pageSize, a - Math.floor(pageSize / 2)));
}

/**
 * Renders the picker: `[promptLine, body]`. The prompt line ends with the
 * query (the terminal cursor sits after it); the body is the header, the
 * visible rows and a help line. With `done`, a single line naming the pick.
 */
export function renderPicker<T>(
  items: readonly PickItem<T>[],
  state: PickerState,
  view: PickerView,
  done = false,
): [string, string] {
  const st = view.style ?? plainStyle;
  const width = Math.max(20, view.width ?? 80) - 1;
  const pageSize = Math.max(1, view.pageSize ?? 10);
  const head = `${st.prefix(done)} ${st.message(view.message + ":")}`;
  if (done) {
    const it = selectedItem(items, state);
    return [`${head} ${st.answer(it ? it.short ?? it.cells[0] ?? "" : "")}`, ""];
  }
  const list = filterItems(items, state.query);
  const widths = columnWidths(items, view.headers);
  const rowWidth = width - 2;
  const lines: string[] = [];
  if (view.headers?.length) lines.push(st.dim("  " + formatRow(view.headers, widths, rowWidth)));
  if (list.length === 0) {
    lines.push(st.warn(`  no ${view.noun ?? "items"} match '${state.query}'`));
  } else {
    const start = pageStart(list.length, state.active, pageSize);
    const end = Math.min(list.length, start + pageSize);
    if (start > 0) lines.push(st.dim(`  ↑ ${start} more`));
    for (let i = start; i < end; i++) {
      const it = list[i];
      const row = formatRow(it.cells, widths, rowWidth);
      if (it.disabled) lines.push(st.dim(`  ${row}`));
      else if (i === state.active) lines.push(st.highlight(`❯ ${row}`));
      else lines.push(`  ${row}`);
    }
    if (end < list.length) lines.push(st.dim(`  ↓ ${list.length - end} more`));
  }
  const disabled = list.filter((it) => it.disabled);
  const help = [
    `${list.length}/${items.length}`,
    "type to filter",
    "↑↓ move",
    `⏎ ${view.action ?? "select"}`,
    "ctrl-c cancel",
  ].join(" · ");
  if (list.length > 0 && state.active < 0) {
    lines.push(st.warn(`  nothing here can be picked (${disabled[0].disabled})`));
  }
  lines.push(st.dim(cut(help, width)));
  return [`${head} ${state.query}`, lines.join("\n")];
}

// ---- machines ----------------------------------------------------------------

export const MACHINE_HEADERS = ["NAME", "ID", "HOSTNAME", "STATUS", "HEARTBEAT"];

/** `prod-api-1 (8f23a4b0)`: how a machine is named in prompts and banners. */
export function machineLabel(m: Pick<MachineView, "name" | "id">): string {
  return visible(`${m.name} (${m.id.slice(0, 8)})`);
}

/**
 * Picker rows for machines, online ones first (then by name). Offline
 * machines are listed, dimmed and marked `offline`, but cannot be picked:
 * attaching to one could only fail with `machine_offline`.
 */
export function machineItems(machines: readonly MachineView[]): PickItem<MachineView>[] {
  const sorted = [...machines].sort((a, b) =>
    Number(b.online) - Number(a.online) || a.name.localeCompare(b.name) || a.id.localeCompare(b.id)
  );
  return sorted.map((m) => ({
    value: m,
    cells: [
      m.name,
      m.id.slice(0, 8),
      m.hostname,
      m.online ? "online" : "offline",
      formatAge(m.heartbeat_age_ms),
    ],
    search: [
      m.name,
      m.hostname,
      m.id,
      ...Object.entries(m.labels ?? {}).map(([k, v]) => `${k}=${v}`),
    ].join(" "),
    disabled: m.online ? undefined : "offline",
    short: machineLabel(m),
  }));
}
