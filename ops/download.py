"""ImageNet weights as the release gets them: fetched once into the torch hub cache, verified.

The release initialises its backbone with ``model_zoo.load_url``: torchvision's file is
downloaded into ``<torch hub dir>/checkpoints/`` on first use and read from there afterwards.
``imagenet_weights(arch)`` does the same, with these guarantees:

- the file is checked against the SHA-256 prefix its torchvision name carries
  (``resnet50-0676ba61.pth``: the sha256 starts with ``0676ba61``, what torch.hub checks);
- it is written atomically (a temporary file renamed once complete and verified), so no
  partial or unverified file is ever at the final path;
- a file already at the final path that fails the check (a partial copy, a corrupt disk) is
  fetched again once; a second failure is a one-line error;
- offline (``main.py --offline`` or ``MASNET_OFFLINE=1``) nothing is downloaded: a missing file
  is a one-line error saying where to put it, a file failing the check is used with a warning;
- a cache that already holds the file the release fetched (``RELEASE_IMAGENET_FILES``, the
  same weights in torch's legacy serialisation) uses it, checked against its own name's prefix,
  before anything is downloaded;
- the address is ``IMAGENET_URL`` (torchvision's) unless ``MASNET_WEIGHTS_URL`` names another
  base (a mirror, or the local server of the tests); a progress bar shows on a terminal.
"""
import contextlib
import hashlib
import logging
import os
import urllib.error
import urllib.request

import torch

from archs import IMAGENET_WEIGHT_FILES
from ops.errors import UserError
from ops.files import atomic_write
from ops.logs import progress

IMAGENET_URL = 'https://download.pytorch.org/models/'
URL_ENV = 'MASNET_WEIGHTS_URL'
OFFLINE_ENV = 'MASNET_OFFLINE'
# the files the release's model_zoo.load_url fetches: torchvision's IMAGENET1K_V1 weights as
# first published; torchvision re-saved them in the zip format under archs.IMAGENET_WEIGHT_FILES'
# names (pytorch/vision issue 2068), the files this code fetches
RELEASE_IMAGENET_FILES = {
    'resnet50': 'resnet50-19c8e357.pth',
    'resnet101': 'resnet101-5d3b4d8f.pth',
}
CHUNK = 1 << 20
TIMEOUT_S = 60

logger = logging.getLogger('masnet.model')


class DownloadError(UserError):
    """Weights that cannot be fetched, or that fail their checksum."""


def imagenet_weight_path(arch):
    """Where torchvision keeps the IMAGENET1K_V1 weights of `arch` (the torch hub cache)."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', IMAGENET_WEIGHT_FILES[arch])


def release_weight_path(arch):
    """Where the release's model_zoo call keeps `arch`'s weights (None: it fetches none)."""
    name = RELEASE_IMAGENET_FILES.get(arch)
    return os.path.join(torch.hub.get_dir(), 'checkpoints', name) if name else None


def cached_release_weights(arch):
    """The release's file for `arch` when the torch hub cache holds it and it passes its own
    sha256 check, else None (a failing copy is named in a warning and not used)."""
    path = release_weight_path(arch)
    if path is None or not os.path.isfile(path):
        return None
    if not hash_matches(path):
        logger.warning("'%s' (the release's ImageNet file) does not match the sha256 prefix in "
                       "its name: not used", path)
        return None
    logger.info("using the release's ImageNet file '%s'", path)
    return path


def imagenet_weight_url(arch):
    """The address of `arch`'s weights: MASNET_WEIGHTS_URL's base, else torchvision's."""
    base = os.environ.get(URL_ENV) or IMAGENET_URL
    return base.rstrip('/') + '/' + IMAGENET_WEIGHT_FILES[arch]


def offline_from_env():
    """True when MASNET_OFFLINE is set to anything but '', '0' or 'false'."""
    return os.environ.get(OFFLINE_ENV, '').strip().lower() not in ('', '0', 'false', 'no')


def expected_hash_prefix(path):
    """The sha256 prefix a torchvision file name carries (``name-<hex>.ext``), or None."""
    stem = os.path.splitext(os.path.basename(path))[0]
    prefix = stem.rsplit('-', 1)[-1] if '-' in stem else ''
    return prefix.lower() if len(prefix) >= 8 and all(c in '0123456789abcdef'
                                                     for c in prefix.lower()) else None


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(path):
    """Whether the file at `path` has the sha256 prefix of its name (True for a name without)."""
    prefix = expected_hash_prefix(path)
    return prefix is None or sha256_of(path).startswith(prefix)


def download(url, path):
    """Fetch `url` into `path` atomically, refusing bytes whose sha256 does not start with the
    prefix in `path`'s name; nothing is left at `path` unless the whole, verified file."""
    prefix = expected_hash_prefix(path)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, \
                atomic_write(path) as out:
            size = int(response.headers.get('Content-Length') or 0) or None
            with progress(total=size, unit='B', unit_scale=True, unit_divisor=1024,
                          desc=os.path.basename(path)) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b''):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if prefix and not digest.hexdigest().startswith(prefix):
                raise DownloadError(f"'{url}' served a file whose sha256 {digest.hexdigest()[:16]}"
                                    f"... does not start with {prefix}: nothing was written to "
                                    f"'{path}'; try again, or place the file there by hand")
    except UserError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, 'reason', None) or exc
        raise DownloadError(f"cannot download '{url}' ({reason}); fetch it by hand to '{path}', "
                            f"or pass --pretrain none or --pretrain PATH") from None


def imagenet_weights(arch, offline=None):
    """The path of `arch`'s verified ImageNet weights in the torch hub cache, downloading them
    when missing or failing their checksum, unless the release's file is there (see the module
    docstring).

    offline: True refuses to download; None reads MASNET_OFFLINE.
    """
    if arch not in IMAGENET_WEIGHT_FILES:
        raise DownloadError(f"--pretrain imagenet: no torchvision weights exist for '{arch}'; "
                            f"pass --pretrain none or a weight file")
    offline = offline_from_env() if offline is None else offline
    path, url = imagenet_weight_path(arch), imagenet_weight_url(arch)
    if os.path.isfile(path) and hash_matches(path):
        return path
    release = cached_release_weights(arch)
    if release:
        return release
    if os.path.isfile(path):
        if offline:
            logger.warning("'%s' does not match the sha256 prefix in its name (a partial or "
                           "modified copy?); offline, so it is used as it is", path)
            return path
        logger.warning("'%s' does not match the sha256 prefix in its name (a partial or "
                       "corrupt copy): fetching it again", path)
        with contextlib.suppress(FileNotFoundError):  # another process may have removed it
            os.remove(path)
    elif offline:
        raise DownloadError(f"--pretrain imagenet: '{path}' not found and offline (--offline or "
                            f"{OFFLINE_ENV}=1); fetch {url} to that path, or pass --pretrain none "
                            f"or --pretrain PATH")
    logger.info('downloading %s to %s', url, path)
    download(url, path)
    return path
