// The vmail web inbox. Talks only to this daemon's /api; every text that
// comes from other users is set with textContent, never parsed as HTML.

const $ = (id) => document.getElementById(id);
let me = null;
let events = null;

// The token comes in the URL's fragment, which the browser never sends;
// it is kept in this origin's storage (another port is another origin)
// and sent as a header with every API call.
const TOKEN_KEY = 'vmail-token';
if (location.hash.startsWith('#token=')) {
  localStorage.setItem(TOKEN_KEY, location.hash.slice('#token='.length));
  history.replaceState(null, '', location.pathname);
}
// Read at each call: a page left open across a restart takes the new
// token as soon as the new URL is opened in another tab.
const token = () => localStorage.getItem(TOKEN_KEY) || '';

/** An element with text and children; `cls` may be empty. */
function el(tag, cls, text, ...children) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  for (const c of children) e.append(c);
  return e;
}

function button(text, cls, onclick) {
  const b = el('button', cls, text);
  b.type = 'button';
  b.addEventListener('click', onclick);
  return b;
}

function say(text, error = false) {
  const m = $('message');
  m.textContent = text;
  m.className = error ? 'error' : '';
  m.hidden = false;
}

/** A call to the API; throws an Error carrying the daemon's message. */
async function api(path, { method = 'GET', json, body, type } = {}) {
  const init = { method, headers: { 'x-vmail-token': token() } };
  if (json !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.headers['content-type'] = type;
    init.body = body;
  }
  const r = await fetch(path, init);
  if (!r.ok) {
    let why = `${r.status} ${r.statusText}`;
    try { why = (await r.json()).error; } catch { /* not JSON */ }
    const e = new Error(why);
    e.status = r.status;
    throw e;
  }
  return r;
}

/** The pieces of a streamed response body, split at `sep`. */
async function* pieces(response, sep) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += value;
    let end;
    while ((end = buffered.indexOf(sep)) >= 0) {
      yield buffered.slice(0, end);
      buffered = buffered.slice(end + sep.length);
    }
  }
}

const getJson = async (path) => (await api(path)).json();
const post = async (path, json) => (await api(path, { method: 'POST', json })).json();

/** Runs `f`, showing its error in the message bar. */
async function guarded(f) {
  try {
    await f();
  } catch (e) {
    say(e.message, true);
    if (e.status === 401 && me) await start();
  }
}

const when = (unix) => new Date(unix * 1000).toLocaleString();
const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;
function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(1)} GiB`;
}

// ---- tabs ----------------------------------------------------------------

const loaders = {};
function show(tab) {
  $('message').hidden = true;
  for (const b of document.querySelectorAll('#tabs button')) {
    b.classList.toggle('active', b.dataset.tab === tab);
  }
  for (const s of document.querySelectorAll('section.tab')) s.hidden = s.id !== tab;
  if (loaders[tab]) guarded(loaders[tab]);
}
for (const b of document.querySelectorAll('#tabs button')) {
  b.addEventListener('click', () => show(b.dataset.tab));
}

// ---- session -------------------------------------------------------------

async function start() {
  const s = await getJson('/api/session');
  const was = me;
  me = s.username;
  $('auth-error').hidden = !s.auth_error;
  $('auth-error').textContent = s.auth_error || '';
  $('login').hidden = !!me;
  $('tabs').hidden = !me;
  $('who').textContent = me ? `logged in as ${me}` : '';
  if (!me) {
    for (const s of document.querySelectorAll('section.tab')) s.hidden = true;
    if (events) events.abort();
    events = null;
    return;
  }
  // The same user (a call refused by the group, say) stays where they are.
  if (was !== me) show('inbox');
  watch();
}

$('login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  guarded(async () => {
    $('login-submit').disabled = true;
    let s;
    try {
      s = await post('/api/login', { username: $('login-user').value.trim(), password: $('login-pass').value });
    } finally {
      $('login-submit').disabled = false;
      $('login-pass').value = '';
    }
    await start();
    if (s.note) say(s.note);
  });
});

$('logout').addEventListener('click', () => guarded(async () => {
  const s = await post('/api/logout');
  await start();
  say(s.note ? `logged out; ${s.note}` : 'logged out');
}));

// ---- inbox ---------------------------------------------------------------

let reload = null;
/** Follows /api/events (server-sent events, read with fetch so that the
 * token goes in a header) and reloads the inbox on each event; after a
 * failure, tries again in 5 s. */
function watch() {
  if (events) return;
  const controller = new AbortController();
  events = controller;
  const again = () => {
    if (events !== controller) return;
    events = null;
    say('lost the live inbox; reconnecting…', true);
    setTimeout(() => { if (me) watch(); }, 5000);
  };
  (async () => {
    const r = await fetch('/api/events', { headers: { 'x-vmail-token': token() }, signal: controller.signal });
    if (!r.ok) throw new Error(r.statusText);
    if ($('message').textContent.startsWith('lost the live inbox')) $('message').hidden = true;
    for await (const block of pieces(r, '\n\n')) {
      // Coalesce a burst of pushes into one reload.
      if (block.split('\n').includes('event: inbox')) {
        clearTimeout(reload);
        reload = setTimeout(() => guarded(loadInbox), 150);
      }
    }
  })().then(again, (e) => { if (e.name !== 'AbortError') again(); });
}

const player = $('player');
let playing = null;
const audioBlobs = new Map();
const blobUrls = new Map();

/** An object URL for `blob` in slot `slot`, revoking the one before. */
function blobUrl(slot, blob) {
  if (blobUrls.has(slot)) URL.revokeObjectURL(blobUrls.get(slot));
  const url = URL.createObjectURL(blob);
  blobUrls.set(slot, url);
  return url;
}

async function audioOf(v) {
  if (!audioBlobs.has(v.id)) {
    const r = await api(`/api/voicemail/${v.id}/audio`);
    audioBlobs.set(v.id, await r.blob());
  }
  return audioBlobs.get(v.id);
}

function senderLine(v) {
  const line = el('span', 'sender', v.sender);
  if (v.anonymous) line.append(' ', el('span', 'badge anonymous', 'anonymous'));
  else if (v.first_contact) line.append(' ', el('span', 'badge', 'unknown caller'));
  return line;
}

async function loadInbox() {
  const list = await getJson('/api/inbox');
  const ul = $('inbox-list');
  ul.replaceChildren();
  $('inbox-empty').hidden = list.length > 0;
  $('inbox-count').textContent = list.length ? `(${list.length})` : '';
  for (const v of list) {
    const li = el('li', 'voicemail');
    li.dataset.id = v.id;
    if (playing && playing.id === v.id) li.classList.add('playing');
    const meta = `${when(v.deposited_at)} · ${seconds(v.duration_ms)} · ${bytes(v.size)}`;
    li.append(
      senderLine(v),
      el('span', 'meta', meta),
      button('Play', 'play', () => guarded(() => play(v))),
      button('Save as', 'save', () => guarded(() => save(v))),
      button('Delete', 'delete', () => guarded(() => remove(v))),
    );
    if (!v.anonymous && v.first_contact) {
      li.append(button('Add to contacts', 'add-contact', () => guarded(async () => {
        await post('/api/contacts', { add: [v.sender] });
        say(`${v.sender} is now a contact`);
        await loadInbox();
      })));
    }
    li.append(button('Report spam', 'report', () => guarded(async () => {
      const r = await post(`/api/voicemail/${v.id}/report`);
      await post(`/api/voicemail/${v.id}/ack`);
      say(`reported; ${r.sender ? r.sender : 'the hidden sender'} is blocked`);
      await loadInbox();
    })));
    ul.append(li);
  }
}
loaders.inbox = loadInbox;

async function play(v) {
  $('now-playing').textContent = `fetching ${v.sender}'s voicemail…`;
  const blob = await audioOf(v);
  playing = v;
  player.src = blobUrl('player', blob);
  player.dataset.voicemail = v.id;
  player.dataset.durationMs = v.duration_ms;
  $('now-playing').textContent = `${v.sender}, ${when(v.deposited_at)}`;
  wave();
  await player.play();
}

player.addEventListener('ended', () => guarded(async () => {
  const v = playing;
  if (!v) return;
  if ($('keep').checked) {
    say('kept unheard: it stays in your inbox');
    return;
  }
  // Only what was heard is acked: a skip to the end keeps it (played
  // through afterwards, it counts).
  let heard = 0;
  for (let i = 0; i < player.played.length; i++) heard += player.played.end(i) - player.played.start(i);
  if (!(heard >= player.duration * 0.9)) {
    say(`only ${Math.round((100 * heard) / player.duration) || 0}% of it was played: it stays in your inbox`);
    return;
  }
  playing = null;
  await post(`/api/voicemail/${v.id}/ack`);
  audioBlobs.delete(v.id);
  $('now-playing').textContent = '';
  await loadInbox();
}));

async function save(v) {
  const blob = await audioOf(v);
  const a = el('a');
  a.href = blobUrl('save', blob);
  a.download = `voicemail-${v.sender}-${new Date(v.deposited_at * 1000).toISOString().slice(0, 19).replaceAll(':', '')}.wav`;
  a.click();
}

async function remove(v) {
  if (!confirm(`Delete the voicemail from ${v.sender}? It cannot be fetched again.`)) return;
  await post(`/api/voicemail/${v.id}/ack`);
  audioBlobs.delete(v.id);
  await loadInbox();
}

// The waveform of what plays, drawn from the audio element itself; set up
// at the first play (an AudioContext needs a user's gesture).
let analyser = null;
function wave() {
  if (analyser) return;
  const ctx = new AudioContext();
  analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaElementSource(player).connect(analyser);
  analyser.connect(ctx.destination);
  const canvas = $('wave');
  const g = canvas.getContext('2d');
  const data = new Uint8Array(analyser.fftSize);
  const draw = () => {
    analyser.getByteTimeDomainData(data);
    g.fillStyle = '#0f1726';
    g.fillRect(0, 0, canvas.width, canvas.height);
    g.strokeStyle = '#7fb0ff';
    g.beginPath();
    for (let i = 0; i < data.length; i++) {
      const x = (i / data.length) * canvas.width;
      const y = (data[i] / 255) * canvas.height;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    }
    g.stroke();
    if (!player.paused) requestAnimationFrame(draw);
  };
  player.addEventListener('play', () => requestAnimationFrame(draw));
  requestAnimationFrame(draw);
}

// ---- record and leave ----------------------------------------------------

let recorder = null;
let recording = null;

$('rec-start').addEventListener('click', () => guarded(async () => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.addEventListener('dataavailable', (e) => chunks.push(e.data));
  recorder.addEventListener('stop', () => guarded(async () => {
    for (const t of stream.getTracks()) t.stop();
    const ctx = new AudioContext();
    let decoded;
    try {
      decoded = await ctx.decodeAudioData(await new Blob(chunks).arrayBuffer());
    } finally {
      ctx.close();
    }
    recording = await toWav(decoded);
    const preview = $('rec-preview');
    preview.src = blobUrl('preview', recording.blob);
    preview.hidden = false;
    $('rec-status').textContent = `Recorded ${seconds(recording.durationMs)}.`;
    $('rec-status').dataset.durationMs = recording.durationMs;
    $('rec-send').disabled = false;
  }));
  recorder.start();
  $('rec-start').disabled = true;
  $('rec-stop').disabled = false;
  $('rec-send').disabled = true;
  $('rec-status').textContent = 'Recording…';
}));

$('rec-stop').addEventListener('click', () => {
  recorder.stop();
  $('rec-start').disabled = false;
  $('rec-stop').disabled = true;
});

/** 16 kHz mono 16-bit PCM WAV of decoded audio. */
async function toWav(decoded) {
  const rate = 16000;
  const frames = Math.round(decoded.duration * rate);
  const offline = new OfflineAudioContext(1, frames, rate);
  const src = offline.createBufferSource();
  src.buffer = decoded;
  src.connect(offline.destination);
  src.start();
  const pcm = (await offline.startRendering()).getChannelData(0);
  const out = new DataView(new ArrayBuffer(44 + pcm.length * 2));
  const text = (at, s) => { for (let i = 0; i < s.length; i++) out.setUint8(at + i, s.charCodeAt(i)); };
  text(0, 'RIFF'); out.setUint32(4, 36 + pcm.length * 2, true); text(8, 'WAVE');
  text(12, 'fmt '); out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true);
  out.setUint32(24, rate, true); out.setUint32(28, rate * 2, true); out.setUint16(32, 2, true); out.setUint16(34, 16, true);
  text(36, 'data'); out.setUint32(40, pcm.length * 2, true);
  for (let i = 0; i < pcm.length; i++) {
    const s = Math.max(-1, Math.min(1, pcm[i]));
    out.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return { blob: new Blob([out], { type: 'audio/wav' }), durationMs: Math.floor((pcm.length * 1000) / rate) };
}

function stageState(stage, state) {
  const order = ['encrypt', 'grant', 'upload', 'deposit'];
  for (const li of document.querySelectorAll('#rec-stages li')) {
    const i = order.indexOf(li.dataset.stage);
    const at = order.indexOf(stage);
    li.classList.toggle('done', i < at || (i === at && state === 'done'));
    li.classList.toggle('active', i === at && state !== 'done');
  }
}

$('leave-form').addEventListener('submit', (e) => {
  e.preventDefault();
  guarded(async () => {
    if (!recording) throw new Error('record something first');
    const to = $('rec-to').value;
    $('rec-send').disabled = true;
    $('rec-result').textContent = '';
    const q = new URLSearchParams({ to, anonymous: $('rec-anon').checked });
    try {
      const r = await api(`/api/leave?${q}`, { method: 'POST', body: recording.blob, type: 'audio/wav' });
      for await (const text of pieces(r, '\n')) {
        const line = JSON.parse(text);
        if (line.stage) {
          const s = line.stage;
          stageState(s.stage, s.done >= s.total && s.total > 0 ? 'done' : 'active');
          if (s.note) say(s.note);
        } else if (line.done) {
          stageState('deposit', 'done');
          const d = line.done;
          let text = `Left for ${d.recipients.join(', ')} (${d.redundancy}).`;
          if (d.refused.length) text += ` Not delivered: ${d.refused.join('; ')}.`;
          $('rec-result').textContent = text;
          $('rec-result').dataset.id = d.id;
        } else if (line.error) {
          throw new Error(line.error.message);
        }
      }
    } finally {
      $('rec-send').disabled = false;
    }
  });
});

async function loadContacts() {
  const p = await getJson('/api/policy');
  $('contact-names').replaceChildren(...p.contacts.map((c) => { const o = el('option'); o.value = c; return o; }));
  return p;
}
loaders.record = loadContacts;

// ---- sent ----------------------------------------------------------------

loaders.sent = async () => {
  const sent = await getJson('/api/sent');
  const body = $('sent-list');
  body.replaceChildren();
  for (const v of sent) {
    const who = el('td');
    for (const r of v.recipients) {
      who.append(el('div', `state-${r.state.replaceAll(' ', '-')}`, `${r.username}: ${r.state}`));
    }
    const act = el('td');
    if (v.recipients.some((r) => r.state === 'pending')) {
      act.append(button('Recall', 'recall', () => guarded(async () => {
        await post(`/api/sent/${v.id}/recall`);
        await loaders.sent();
      })));
    }
    const tr = el('tr', '', null, el('td', '', when(v.left_at)), el('td', '', bytes(v.size)), who, act);
    tr.dataset.id = v.id;
    body.append(tr);
  }
};

// ---- settings ------------------------------------------------------------

function showPolicy(p) {
  $('policy-mode').value = p.mode;
  $('policy-anon').checked = p.accept_anonymous;
  const list = (ul, names, field) => ul.replaceChildren(...names.map((n) => el('li', '', null, el('span', '', n),
    button('Remove', '', () => guarded(async () => showPolicy(await post(`/api/${field}`, { remove: [n] })))))));
  list($('contacts'), p.contacts, 'contacts');
  list($('blocked'), p.blocked, 'blocked');
  $('hidden-blocked').textContent = p.hidden_blocked ? `and ${p.hidden_blocked} hidden sender(s) you reported` : '';
}

loaders.settings = async () => {
  showPolicy(await loadContacts());
  const a = await getJson('/api/account');
  $('retention-days').value = Math.round(a.retention_secs / 86400);
  const dl = $('account');
  dl.replaceChildren();
  const row = (k, v) => dl.append(el('dt', '', k), el('dd', '', v));
  row('user', a.username);
  row('session until', when(a.session_expires_at));
  row('spam reports against you', String(a.reports));
  for (const q of a.allowances) {
    const n = q.name.endsWith('bytes') ? bytes : String;
    row(q.name.replaceAll('_', ' '), `${n(q.used)} of ${n(q.limit)}`);
  }
};

$('policy-form').addEventListener('submit', (e) => {
  e.preventDefault();
  guarded(async () => {
    showPolicy(await post('/api/policy', { mode: $('policy-mode').value, accept_anonymous: $('policy-anon').checked }));
    say('policy saved');
  });
});

for (const [form, input, field, done] of [
  ['contact-form', 'contact-name', 'contacts', 'added to contacts'],
  ['block-form', 'block-name', 'blocked', 'blocked'],
]) {
  $(form).addEventListener('submit', (e) => {
    e.preventDefault();
    guarded(async () => {
      const name = $(input).value.trim();
      showPolicy(await post(`/api/${field}`, { add: [name] }));
      $(input).value = '';
      say(`${name} ${done}`);
    });
  });
}

$('retention-form').addEventListener('submit', (e) => {
  e.preventDefault();
  guarded(async () => {
    await post('/api/retention', { days: Number($('retention-days').value) });
    say('retention saved');
    await loaders.settings();
  });
});

// ---- network -------------------------------------------------------------

loaders.network = async () => {
  const s = await getJson('/api/status');
  const dl = $('net');
  dl.replaceChildren();
  const row = (k, v) => dl.append(el('dt', '', k), el('dd', '', v));
  row('peer id', s.peer_id);
  row('role', s.role);
  row('supernode', s.attached_to || (s.role === 'supernode' ? 'this peer' : 'none'));
  row('supernodes', s.supernodes.join(', ') || 'none known');
  if (s.role === 'supernode') row('attached peers', String(s.attached_peers));
  row('reachability', s.reachability);
  if (s.relay_addr) row('relay address', s.relay_addr);
  row('peers', `${s.connected_peers} connected, ${s.routing_peers} in the routing table`);
  row('listening on', s.listen_addrs.join(', '));
  row('objects held', `${s.objects} (${bytes(s.stored_bytes)} of ${bytes(s.quota_bytes)} quota)`);
};

guarded(start);
