"""ImageNet weights fetched as the release fetches them, from a local HTTP server on 127.0.0.1:
fresh fetch, checksum mismatch, partial file at the final path, offline, server down."""
import hashlib
import http.server
import io
import logging
import os
import threading

import pytest
import torch

from archs import IMAGENET_WEIGHT_FILES
from ops import download, models
from ops.run_train import build_model
from opts import parse_args
from tests.conftest import free_port


def stem_weights(seed=0):
    """A tiny torchvision-layout weight file: the stem of a ResNet (conv1 + bn1) and an fc."""
    g = torch.Generator().manual_seed(seed)
    state = {'conv1.weight': torch.randn(64, 3, 7, 7, generator=g),
             'bn1.weight': torch.rand(64, generator=g), 'bn1.bias': torch.randn(64, generator=g),
             'bn1.running_mean': torch.randn(64, generator=g),
             'bn1.running_var': torch.rand(64, generator=g) + 0.5,
             'fc.weight': torch.randn(1000, 512, generator=g)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return state, buffer.getvalue()


class Server:
    """http.server in a thread on 127.0.0.1 (port 0): serves `files` {name: bytes}, counts
    requests."""

    def __init__(self, files):
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path.lstrip('/'))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """(state dict, its bytes, its file name, final path) of a fake 'resnet10' ImageNet file
    whose name carries its own sha256 prefix; TORCH_HOME in tmp_path, downloads allowed."""
    state, data = stem_weights()
    name = f'resnet10-{hashlib.sha256(data).hexdigest()[:8]}.pth'
    monkeypatch.setitem(IMAGENET_WEIGHT_FILES, 'resnet10', name)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv(download.OFFLINE_ENV)
    return state, data, name, str(tmp_path / 'torch' / 'hub' / 'checkpoints' / name)


@pytest.fixture
def serve(monkeypatch):
    servers = []

    def start(files):
        server = Server(files)
        servers.append(server)
        monkeypatch.setenv(download.URL_ENV, server.url)
        return server

    yield start
    for server in servers:
        server.close()


def folder_files(path):
    return sorted(os.listdir(os.path.dirname(path))) if os.path.isdir(os.path.dirname(path)) \
        else []


def test_missing_file_is_fetched_verified_and_loads(weights, serve):
    state, data, name, path = weights
    server = serve({name: data})
    assert download.imagenet_weights('resnet10') == path
    assert server.requests == ['/' + name]
    assert folder_files(path) == [name]  # no temporary file left beside it
    with open(path, 'rb') as f:
        assert f.read() == data
    model = models.build_model(5, 4, 'MASNet', 'resnet10', pretrain='imagenet')
    own = model.state_dict()
    for key in ('conv1.weight', 'bn1.weight', 'bn1.running_var'):
        assert torch.equal(own['base_model.' + key], state[key]), key
    assert model.num_pretrained_tensors == 5  # conv1 + 4 bn1 tensors; fc skipped
    assert server.requests == ['/' + name]  # the cached file is used, not fetched again


def test_checksum_mismatch_is_one_line_and_leaves_no_file(weights, serve):
    _, data, name, path = weights
    server = serve({name: data[:-1] + b'x'})
    with pytest.raises(download.DownloadError) as err:
        download.imagenet_weights('resnet10')
    message = str(err.value)
    assert '\n' not in message and 'sha256' in message and name.split('-')[1][:8] in message
    assert server.requests == ['/' + name]
    assert folder_files(path) == []


@pytest.mark.parametrize('served_ok', [True, False])
def test_partial_file_at_the_final_path_is_fetched_again_once(weights, serve, served_ok):
    _, data, name, path = weights
    os.makedirs(os.path.dirname(path))
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])  # an interrupted copy
    server = serve({name: data if served_ok else data[:-1] + b'x'})
    if served_ok:
        assert download.imagenet_weights('resnet10') == path
        with open(path, 'rb') as f:
            assert f.read() == data
    else:
        with pytest.raises(download.DownloadError, match='does not start with') as err:
            models.build_model(5, 4, 'MASNet', 'resnet10', pretrain='imagenet')
        assert '\n' not in str(err.value)
        assert folder_files(path) == []
    assert server.requests == ['/' + name]  # once, not in a loop


def test_offline_flag_and_variable_make_no_request(weights, serve, monkeypatch):
    _, data, name, path = weights
    server = serve({name: data})
    args = parse_args(['--arch', 'resnet10', '--num_segments', '4', '--offline'])
    with pytest.raises(download.DownloadError) as err:
        build_model(args, 5)
    message = str(err.value)
    assert '\n' not in message and path in message and '--pretrain none' in message
    monkeypatch.setenv(download.OFFLINE_ENV, '1')
    with pytest.raises(download.DownloadError, match='offline'):
        models.build_model(5, 4, 'MASNet', 'resnet10', pretrain='imagenet')
    assert server.requests == []
    assert folder_files(path) == []
    # without --offline, main.py's model fetches the file
    monkeypatch.delenv(download.OFFLINE_ENV)
    model = build_model(parse_args(['--arch', 'resnet10', '--num_segments', '4']), 5)
    assert model.num_pretrained_tensors == 5 and server.requests == ['/' + name]


def test_server_down_is_one_line_naming_the_url(weights, monkeypatch):
    _, _, name, path = weights
    url = f'http://127.0.0.1:{free_port()}/'  # nothing listens there
    monkeypatch.setenv(download.URL_ENV, url)
    with pytest.raises(download.DownloadError) as err:
        download.imagenet_weights('resnet10')
    message = str(err.value)
    assert '\n' not in message and url + name in message and path in message
    assert folder_files(path) == []


def test_file_names_carry_the_sha256_prefix():
    assert download.expected_hash_prefix('/x/resnet50-0676ba61.pth') == '0676ba61'
    assert download.expected_hash_prefix('/x/my_weights.pth') is None
    for arch, name in IMAGENET_WEIGHT_FILES.items():
        assert download.imagenet_weight_url(arch).endswith('/' + name)


def test_the_release_file_in_the_cache_is_used_before_downloading(weights, serve, monkeypatch,
                                                                   caplog):
    """The release's model_zoo file (another name, its own sha256 prefix) already in the cache
    is used as it is; one failing its own check is named and skipped."""
    _, data, name, path = weights
    release_state, release_data = stem_weights(seed=1)
    release_name = f'resnet10-{hashlib.sha256(release_data).hexdigest()[:8]}.pth'
    monkeypatch.setitem(download.RELEASE_IMAGENET_FILES, 'resnet10', release_name)
    release_path = os.path.join(os.path.dirname(path), release_name)
    os.makedirs(os.path.dirname(path))
    with open(release_path, 'wb') as f:
        f.write(release_data)
    server = serve({name: data})
    assert download.imagenet_weights('resnet10', offline=True) == release_path
    model = models.build_model(5, 4, 'MASNet', 'resnet10', pretrain='imagenet')
    assert torch.equal(model.state_dict()['base_model.conv1.weight'],
                       release_state['conv1.weight'])
    assert server.requests == []
    with open(release_path, 'wb') as f:
        f.write(release_data[:-1] + b'x')  # a modified copy
    with caplog.at_level(logging.WARNING, logger='masnet.model'):
        assert download.imagenet_weights('resnet10') == path
    assert f"'{release_path}' (the release's ImageNet file) does not match" in caplog.text
    assert server.requests == ['/' + name]
    with open(release_path, 'wb') as f:
        f.write(release_data)
    assert download.imagenet_weights('resnet10') == path  # torchvision's file, once present
