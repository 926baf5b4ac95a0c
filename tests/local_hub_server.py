"""Test helper: a minimal Hugging Face Hub HTTP endpoint on localhost, for upload tests.

It answers the requests that ``HfApi.create_repo``, ``file_exists`` and
``upload_folder`` send (repo creation, file HEAD, model card validation, pre-upload,
commit with inline files) and keeps the committed files in ``LocalHub.files``. huggingface_hub runs
unmodified against it; only its endpoint constant points here.
"""
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List


class LocalHub:
    """``with LocalHub() as hub: ... hub.endpoint ... hub.files[repo_id][path] -> bytes``."""

    def __init__(self):
        self.files: Dict[str, Dict[str, bytes]] = {}
        self.requests: List[str] = []
        self.readme_yaml_checked = ''
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, status: int, body=None, headers=None):
                data = json.dumps(body).encode() if body is not None else b''
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get('Content-Length') or 0))

            def do_HEAD(self):
                hub.requests.append(f'HEAD {self.path}')
                self._reply(404, headers={'X-Error-Code': 'EntryNotFound', 'X-Error-Message': 'Entry not found'})

            def do_GET(self):
                hub.requests.append(f'GET {self.path}')
                self._reply(404, {'error': 'not found'}, {'X-Error-Code': 'EntryNotFound'})

            def do_POST(self):
                hub.requests.append(f'POST {self.path}')
                body = self._body()
                parts = self.path.split('?')[0].strip('/').split('/')
                if parts[:3] == ['api', 'repos', 'create']:
                    request = json.loads(body)
                    repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
                    hub.files.setdefault(repo_id, {})
                    return self._reply(200, {'url': f'{hub.endpoint}/{repo_id}', 'name': repo_id})
                if parts == ['api', 'validate-yaml']:
                    hub.readme_yaml_checked = json.loads(body)['content']
                    return self._reply(200, {})
                if parts[:2] == ['api', 'models'] and 'preupload' in parts:
                    files = json.loads(body)['files']
                    return self._reply(200, {'files': [
                        {'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False} for f in files]})
                if parts[:2] == ['api', 'models'] and 'commit' in parts:
                    repo_id = '/'.join(parts[2:parts.index('commit')])
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item['key'] == 'file':
                            value = item['value']
                            hub.files.setdefault(repo_id, {})[value['path']] = base64.b64decode(value['content'])
                    return self._reply(200, {'commitUrl': f'{hub.endpoint}/{repo_id}/commit/1',
                                             'commitOid': '1' * 40, 'pullRequestUrl': None})
                return self._reply(404, {'error': f'unexpected {self.path}'})

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.endpoint = f'http://127.0.0.1:{self.server.server_address[1]}'

    def __enter__(self) -> 'LocalHub':
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
