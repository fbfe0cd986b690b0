"""Environments: the env API, built-in envs, composable rewards, task sources and curricula."""

from envs.arithmetic import ArithmeticEnv
from envs.base import ENVS, Action, Env, Observation, StepResult, Task, make_env, register_env
from envs.calculator import CalculatorEnv, CalculatorError, ToolBonusConfig, evaluate_expression
from envs.chain import ChainArithmeticEnv
from envs.curriculum import (
    Curriculum,
    CurriculumConfig,
    DUMPCurriculum,
    SECCurriculum,
    UniformCurriculum,
    make_curriculum,
    mean_abs_advantage_by_category,
)
from envs.errors import EnvError, EpisodeStateError, InvalidStepResult
from envs.games import (
    OPPONENTS,
    GameEnv,
    GameTaskConfig,
    GameTasks,
    KuhnPokerEnv,
    KuhnPokerSelfPlayEnv,
    TicTacToeEnv,
    TicTacToeSelfPlayEnv,
)
from envs.math_data import MathDataError, MathDatasetConfig, MathDatasetTasks, extract_answer, normalize_number
from envs.registry import Registry, UnknownNameError
from envs.rewards import (
    CompositeReward,
    OverlongPenalty,
    RewardFn,
    REWARDS,
    RewardTerm,
    make_reward,
    register_reward,
)
from envs.safety import EpisodeErrorCounter, SafeEnv
from envs.single_turn import SingleTurnEnv
from envs.tasks import (
    TASK_SOURCES,
    ArithmeticTaskConfig,
    ArithmeticTasks,
    TaskSource,
    make_task_source,
    register_task_source,
)
from envs.toy import FirstDigitEnv

__all__ = [
    "ENVS",
    "OPPONENTS",
    "REWARDS",
    "TASK_SOURCES",
    "Registry",
    "Action",
    "ArithmeticEnv",
    "ArithmeticTaskConfig",
    "ArithmeticTasks",
    "CalculatorEnv",
    "CalculatorError",
    "ChainArithmeticEnv",
    "CompositeReward",
    "Curriculum",
    "CurriculumConfig",
    "DUMPCurriculum",
    "Env",
    "EnvError",
    "EpisodeErrorCounter",
    "EpisodeStateError",
    "InvalidStepResult",
    "FirstDigitEnv",
    "GameEnv",
    "GameTaskConfig",
    "GameTasks",
    "KuhnPokerEnv",
    "KuhnPokerSelfPlayEnv",
    "MathDataError",
    "MathDatasetConfig",
    "MathDatasetTasks",
    "Observation",
    "OverlongPenalty",
    "RewardFn",
    "RewardTerm",
    "SECCurriculum",
    "SafeEnv",
    "SingleTurnEnv",
    "StepResult",
    "Task",
    "TaskSource",
    "TicTacToeEnv",
    "TicTacToeSelfPlayEnv",
    "ToolBonusConfig",
    "UniformCurriculum",
    "UnknownNameError",
    "evaluate_expression",
    "extract_answer",
    "make_curriculum",
    "make_env",
    "make_reward",
    "mean_abs_advantage_by_category",
    "normalize_number",
    "register_env",
    "register_reward",
    "register_task_source",
]
