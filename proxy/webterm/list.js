// The proxy's root page: the sandboxes the login reaches, each with a
// link to its terminal on its own host.
'use strict';
(async function () {
  const resp = await fetch('/_proxy/sandboxes');
  if (resp.status === 401) {
    document.getElementById('login').hidden = false;
    return;
  }
  if (!resp.ok) {
    throw new Error('GET /_proxy/sandboxes: ' + resp.status);
  }
  const { sandboxes } = await resp.json();
  const domain = document.body.dataset.domain;
  const port = location.port ? ':' + location.port : '';
  const rows = document.querySelector('#sandboxes tbody');
  for (const s of sandboxes) {
    const tr = rows.insertRow();
    tr.insertCell().textContent = s.id;
    tr.insertCell().textContent = s.connected ? 'yes' : 'no';
    tr.insertCell().textContent = s.agent_version || '';
    const a = document.createElement('a');
    a.href = location.protocol + '//' + s.id + '.' + domain + port + '/terminal';
    a.textContent = 'terminal';
    tr.insertCell().appendChild(a);
  }
  document.getElementById('sandboxes').hidden = false;
})();
