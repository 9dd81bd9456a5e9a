// durably dashboard: live refresh and confirmations. No framework, no network
// access beyond this dashboard's own URLs.
'use strict';

// Actions that need a second thought say so in data-confirm.
document.addEventListener('submit', (event) => {
  const form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
});

const status = () => document.querySelector('.live');

// The values of <main>'s form fields, to tell whether the user changed any.
const fields = (main) => JSON.stringify([...main.querySelectorAll('input, textarea, select')]
  .map((f) => (f.type === 'checkbox' ? f.checked : f.value)));
let rendered = fields(document.getElementById('main'));

// Whether the user is filling in a form of <main>: a field or a button has
// the focus (a keyboard user about to press it: re-rendered, it would be
// gone) or a field holds something other than what the page was rendered with.
function editing(main) {
  const focused = document.activeElement;
  if (focused && main.contains(focused) && /^(INPUT|TEXTAREA|SELECT|BUTTON)$/.test(focused.tagName)) return true;
  return fields(main) !== rendered;
}

// Re-renders <main> from a fresh copy of this same URL (filters live in the
// URL, so they are kept), unless the user is filling in a form, before or
// after the fetch; the window's scroll position and open <details> are kept.
let refreshing = false;
let again = false;
async function refresh() {
  if (refreshing) { again = true; return; }
  const main = document.getElementById('main');
  if (editing(main)) { again = true; return; }
  refreshing = true;
  try {
    const response = await fetch(location.href, { credentials: 'same-origin', headers: { accept: 'text/html' } });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), 'text/html').getElementById('main');
    if (!fresh) return;
    if (editing(main)) { again = true; return; }
    const open = [...main.querySelectorAll('details')].map((d) => d.open);
    const x = window.scrollX;
    const y = window.scrollY;
    main.replaceChildren(...fresh.childNodes);
    rendered = fields(main);
    main.querySelectorAll('details').forEach((d, i) => { if (open[i]) d.open = true; });
    window.scrollTo(x, y);
    document.body.dataset.refreshed = String(Date.now());
  } catch {
    // the next event or poll tries again
  } finally {
    refreshing = false;
    if (again) { again = false; setTimeout(refresh, 500); }
  }
}

// Server-Sent Events fed by the database's notifications; polling every 5 s
// while the stream is down.
let poller;
function poll(on) {
  if (on && !poller) poller = setInterval(refresh, 5000);
  if (!on && poller) { clearInterval(poller); poller = undefined; }
}
if (window.EventSource && document.body.dataset.events) {
  const events = new EventSource(document.body.dataset.events);
  events.onopen = () => { poll(false); status().textContent = 'live'; };
  events.onmessage = () => refresh();
  events.onerror = () => { poll(true); status().textContent = 'reconnecting…'; };
} else {
  poll(true);
}
document.addEventListener('focusout', () => { if (again) { again = false; setTimeout(refresh, 200); } });
