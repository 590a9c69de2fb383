"""What a run tells its user: the 'masnet' logger (console and log file), progress bars that
appear only on a terminal, and the TensorBoard scalars a run wrote (read back without
TensorFlow)."""
import glob
import logging
import os
import struct
import sys

from tqdm import tqdm


def on_terminal() -> bool:
    """True when progress goes to a terminal; False under SLURM, nohup, a pipe or a file."""
    return sys.stderr.isatty()


def progress(iterable=None, enabled=True, **kwargs):
    """A tqdm progress bar when `enabled` and on a terminal; a silent pass-through otherwise,
    where the callers log a line per interval instead."""
    return tqdm(iterable, disable=not (enabled and on_terminal()), dynamic_ncols=True, **kwargs)


class _TqdmHandler(logging.StreamHandler):
    """Console log lines that do not break tqdm progress bars; records logged with
    ``extra={'console': False}`` (what a progress bar already shows) go to the log file only."""

    def emit(self, record):
        if not getattr(record, 'console', True):
            return
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:
            self.handleError(record)


class _PendingHandler(logging.Handler):
    """Keeps the records logged before the log file exists (checks run before the run folder
    is created), for the file handler set up next."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def setup_logging(log_file=None, is_main=True):
    """Log INFO to the console (main process) and to `log_file`; returns the 'masnet' logger.

    Without `log_file` the records are also kept, and written to the log file of a later
    call (so a run's early messages reach its log.txt).
    """
    logger = logging.getLogger('masnet')
    logger.setLevel(logging.INFO)
    logger.propagate = False
    pending = []
    for handler in list(logger.handlers):
        if isinstance(handler, _PendingHandler):
            pending = handler.records
        logger.removeHandler(handler)
        handler.close()
    console = _TqdmHandler()
    console.setLevel(logging.INFO if is_main else logging.WARNING)
    console.setFormatter(logging.Formatter('%(message)s'))
    logger.addHandler(console)
    if log_file and is_main:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%Y-%m-%d %H:%M:%S'))
        for record in pending:
            file_handler.handle(record)
        logger.addHandler(file_handler)
    else:
        logger.addHandler(_PendingHandler())
    return logger


def close_progress_bars():
    """Clear the progress bars an exception left open, so the error gets a line of its own."""
    for bar in list(getattr(tqdm, '_instances', ())):
        bar.close()


def read_scalars(event_dir):
    """``{tag: [(step, value), ...]}`` of the TensorBoard event files in `event_dir`.

    Reads the TFRecord framing directly (length, crc, payload, crc) with tensorboardX's
    protobuf classes, so no TensorFlow/TensorBoard install is needed.
    """
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(glob.glob(os.path.join(event_dir, 'events.out.tfevents.*'))):
        with open(path, 'rb') as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack('<Q', data[pos:pos + 8])
            if pos + 12 + length + 4 > len(data):  # a record cut short by a killed writer
                break
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
