"""Bridges to other training and logging tools, each imported only when you ask for it.

* :mod:`xaisparse.integrations.lightning`: :class:`~xaisparse.integrations.lightning.SparsityCallback`
  for PyTorch Lightning (imports ``lightning``);
* :mod:`xaisparse.integrations.tensorboard`: :func:`~xaisparse.integrations.tensorboard.write_history`
  and the live :class:`~xaisparse.integrations.tensorboard.TensorBoardCallback` (imports
  ``torch.utils.tensorboard``).

Nothing here is imported by ``import xaisparse``.
"""
