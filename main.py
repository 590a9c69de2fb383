"""Train MAS-Net (or the TSM / TSN baselines): see `python main.py --help` and the README."""
from ops.cli import exit_on_user_error
from ops.run_train import train
from opts import parse_args


@exit_on_user_error
def main(argv=None):
    return train(parse_args(argv))


if __name__ == '__main__':
    main()
