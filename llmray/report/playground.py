"""The playground fragment the serve app puts on its `/` page: one prompt, several models, side by side.

Data flow: the form -> `POST <endpoint>` (default `/v1/compare`) with
`{"prompt": str, "models": [model ids], "max_tokens": int}` (plus `Authorization: Bearer <key>` when
a key is typed) -> `{"results": [{"model": id, "text": str} | {"model": id, "error": str}]}` -> one
card per model (`.pg-result[data-model][data-state=ok|error]`). The fragment is self-contained
(its own style and script, ids prefixed `pg-`), so it can sit in any page. A link such as
`/?prompt=Hello&models=a,b&max_tokens=32&run=1` fills the form and sends it on load: comparisons
can be shared, and a headless browser can exercise the whole round trip.
"""

from __future__ import annotations

import json

from llmray.report.svg import esc


def playground_html(model_ids: list[str], endpoint: str = "/v1/compare", max_tokens: int = 128) -> str:
    """An HTML fragment (a <section>) with the compare form, its style and its script."""
    boxes = "".join(
        f'<label class="pg-model"><input type="checkbox" name="model" value="{esc(m)}" checked> '
        f"{esc(m)}</label>"
        for m in model_ids
    )
    return (
        f'<section id="playground" data-endpoint="{esc(endpoint)}" '
        f"data-models='{esc(json.dumps(list(model_ids)))}'><h2>Playground: one prompt, every model</h2>"
        f'<form id="pg-form"><textarea id="pg-prompt" rows="3" placeholder="Ask every model the same thing…">'
        f"</textarea><div class=pg-row>{boxes or '<em>no models served</em>'}</div><div class=pg-row>"
        f'<label>max tokens <input id="pg-max-tokens" type="number" min="1" '
        f'value="{int(max_tokens)}"></label> '
        f'<label>API key <input id="pg-key" type="password" autocomplete="off" placeholder="if required">'
        f'</label> <button id="pg-send" type="submit">Compare</button> <span id="pg-status"></span></div>'
        f'</form><div id="pg-results"></div><style>{CSS}</style><script>{SCRIPT}</script></section>'
    )


CSS = """
#playground{border:1px solid #e5e7eb;border-radius:8px;padding:4px 16px 12px;margin:16px 0}
#pg-prompt{width:100%;font:14px system-ui,sans-serif;padding:6px}
.pg-row{margin:6px 0;display:flex;flex-wrap:wrap;
gap:12px;align-items:center}#pg-max-tokens{width:80px}#pg-status{color:#6b7280}
#pg-results{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:10px}
.pg-result{border:1px solid #e5e7eb;border-radius:6px;padding:6px 10px;background:#f9fafb}
.pg-result h3{font-size:13px;margin:2px 0 6px}.pg-result pre{white-space:pre-wrap;margin:0;font-size:13px}
.pg-result[data-state=error]{background:#fee2e2}
"""

SCRIPT = """
(function(){
  var root=document.getElementById('playground'),form=document.getElementById('pg-form');
  var out=document.getElementById('pg-results'),status=document.getElementById('pg-status');
  function card(model,state,text){var d=document.createElement('div');d.className='pg-result';
    d.dataset.model=model;d.dataset.state=state;var h=document.createElement('h3');h.textContent=model;
    var p=document.createElement('pre');p.textContent=text;d.appendChild(h);d.appendChild(p);return d;}
  function send(){
    var models=[].filter.call(form.querySelectorAll('input[name=model]'),function(b){return b.checked;})
      .map(function(b){return b.value;});
    var prompt=document.getElementById('pg-prompt').value;
    if(!prompt||!models.length){status.textContent='type a prompt and pick at least one model';return;}
    var headers={'Content-Type':'application/json'},key=document.getElementById('pg-key').value;
    if(key)headers['Authorization']='Bearer '+key;
    out.innerHTML='';models.forEach(function(m){out.appendChild(card(m,'pending','…'));});
    status.textContent='asking '+models.length+' model(s)…';root.dataset.state='pending';var t0=Date.now();
    fetch(root.dataset.endpoint,{method:'POST',headers:headers,body:JSON.stringify(
      {prompt:prompt,models:models,max_tokens:+document.getElementById('pg-max-tokens').value||64})})
    .then(function(r){return r.text().then(function(t){
      if(!r.ok)throw new Error('HTTP '+r.status+': '+t.slice(0,300));return JSON.parse(t);});})
    .then(function(j){out.innerHTML='';(j.results||[]).forEach(function(x){
        out.appendChild(x.error!=null?card(x.model,'error',String(x.error)):card(x.model,'ok',String(x.text)));});
      status.textContent='done in '+((Date.now()-t0)/1000).toFixed(1)+' s';root.dataset.state='done';})
    .catch(function(e){status.textContent=String(e.message||e);root.dataset.state='error';});
  }
  form.addEventListener('submit',function(ev){ev.preventDefault();send();});
  var q=new URLSearchParams(location.search);
  if(q.get('prompt'))document.getElementById('pg-prompt').value=q.get('prompt');
  if(q.get('max_tokens'))document.getElementById('pg-max-tokens').value=q.get('max_tokens');
  if(q.get('models')){var want=q.get('models').split(',');form.querySelectorAll('input[name=model]')
    .forEach(function(b){b.checked=want.indexOf(b.value)>=0;});}
  if(q.get('run')==='1')send();
})();
"""
