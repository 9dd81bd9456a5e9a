/**
 * HTML building blocks. Every value goes through `escape` unless it is an
 * `Html` fragment built here, so user data (ids, args, tags, error messages)
 * always renders as text.
 */

/** A fragment of trusted markup. */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** The one escape function: text for element content and quoted attributes. */
export function escape(value: unknown): string {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ENTITIES[c]);
}

type Value = Html | string | number | boolean | null | undefined | Date | readonly Value[];

function render(value: Value): string {
  if (value instanceof Html) return value.text;
  if (Array.isArray(value)) return value.map(render).join('');
  if (value instanceof Date) return escape(value.toISOString());
  if (value === null || value === undefined || value === false) return '';
  return escape(value);
}

/** Tagged template: interpolated values are escaped, fragments and arrays of fragments are kept. */
export function html(strings: TemplateStringsArray, ...values: Value[]): Html {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1];
  return new Html(out);
}

/** An ISO timestamp shown as a time element (the page script shows it as "3 s ago" beside it). */
export function time(at: Date | null | undefined): Html {
  if (!at) return html`<span class="muted">—</span>`;
  const iso = at.toISOString();
  return html`<time datetime="${iso}">${iso.replace('T', ' ').replace('Z', '')}</time>`;
}

/** A duration in ms as "850 ms", "12.3 s", "4 min 2 s", "3 h 5 min". */
export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
  return `${Math.floor(ms / 3_600_000)} h ${Math.round((ms % 3_600_000) / 60_000)} min`;
}

/** JSON shown as preformatted text. */
export function json(value: unknown): Html {
  return html`<pre class="json">${JSON.stringify(value, null, 2) ?? 'null'}</pre>`;
}

/** A state as a colored badge. */
export function badge(state: string | null | undefined): Html {
  if (!state) return html``;
  return html`<span class="badge state-${state}">${state.replace('rejected_', '')}</span>`;
}
